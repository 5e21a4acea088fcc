"""Inputs of the modules' self-tests (MOSMOSSegmentTest, MOSMOSTrainTest): phantom images and a tiny model.
They are made with torch, monai and nibabel, so the dependency guard runs first: a self-test on a fresh Slicer
installs them instead of failing on an import."""

from __future__ import annotations

from pathlib import Path

from . import deps
from .volumes import volume_from_array


def segmentation_inputs(scene, folder) -> tuple[object, Path]:
    """A phantom CT volume node in ``scene`` and a tiny segmentation model file in ``folder``."""
    deps.ensure_dependencies()
    from mosmos.data.phantoms import make_phantom
    from mosmos.experiments.recipes import make_tiny_segmentation_model

    phantom = make_phantom(0, shape=(48, 48, 32), spacing=(3.0, 3.0, 4.0))
    volume_node = volume_from_array(scene, phantom.image.transpose(2, 1, 0), phantom.affine, "phantom CT")
    return volume_node, make_tiny_segmentation_model(Path(folder) / "MOSMOSSegmentTest.mosmos")


def training_folders(folder) -> tuple[Path, Path]:
    """A phantom ROCO folder (64 pairs) and a phantom Decathlon dataset (2 training, 1 validation case)."""
    deps.ensure_dependencies()
    from mosmos.data.phantoms import write_decathlon_dataset, write_roco_folder

    folder = Path(folder)
    roco = write_roco_folder(folder / "roco", 64, seed=0)
    write_decathlon_dataset(folder / "dataset", 2, 1, seed=0, shape=(32, 32, 16))
    return roco, folder / "dataset"
