import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each (and in the processes they start),
    # rather than two workers fighting over two cores with two threads each.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def scene():
    """A fresh MRML scene installed as slicer.mrmlScene, as the Slicer application does at start-up."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
