import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each (and in the processes they start),
    # rather than two workers fighting over two cores with two threads each.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The files that take minutes on `make test`'s workers, longest first. `make test` passes --no-loadscope-reorder,
# so xdist hands files out in collection order: these start at once, and the many short files fill in beside
# them. (xdist's own order, most tests first, left test_map_recipe.py's single ten-minute test running alone at
# the end while the other worker idled.)
LONGEST_FIRST = (
    "test_map_recipe.py", "test_gpu_check.py", "test_web_security_browser.py", "test_demo.py",
    "test_finetune.py", "test_web_browser.py", "test_slicer_batch.py", "test_study.py", "test_cohort.py",
    "test_pretrain.py", "test_dicom_readers.py", "test_segment_fast_path.py", "test_web_security.py",
    "test_qc_real.py", "test_slicer_train_lib.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the other files keep their order


@pytest.fixture
def scene():
    """A fresh MRML scene installed as slicer.mrmlScene, as the Slicer application does at start-up."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
