import pytest


@pytest.fixture
def scene():
    """A fresh MRML scene installed as slicer.mrmlScene, as the Slicer application does at start-up."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    yield scene
    scene.Clear(1)
