"""Tiny, quickly trained models for tests, self-tests in Slicer and the demo: the real MOSMOS code
paths at a size a laptop CPU trains in seconds."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..files.atomic import atomic_write_bytes
from ..options import TINY_RN, TINY_VIT, TINY_VIT_4, UNET2D, UNETR

# A tiny MOSMOS-UNETR on 4.5 mm phantoms: one 32^3 window holds the whole body (2^3 tokens of the
# tiny ViT). Two crops per step: on the CPU, PyTorch runs batch-1 3D convolutions of this size on a
# slow path (about 2x slower per crop than batch 2, measured).
TINY_SPACING = [4.5, 4.5, 4.5]
TINY_ROI = [32, 32, 32]
TINY_FEATURES = 8
TINY_CROPS = 2
TINY_LR = 1e-2


def tiny_finetune_config(data, out, steps: int, seed: int = 0, pretrained: str | None = None):
    """The tiny recipe: no flips, rotations or intensity shifts, so that a few dozen steps learn
    (augmentation is for generalising over hundreds of epochs; an x-flip also swaps the kidneys). The paper's
    decoder: 2^3 tokens of 72 mm are too coarse a start for the output block (README, deviations)."""
    from ..train.config import FinetuneConfig

    return FinetuneConfig(data=str(data), out=str(out), arch=UNETR, backbone=TINY_VIT,
                          init="mosmos" if pretrained else "random", pretrained=pretrained, epochs=10**6,
                          max_steps=steps, num_samples=TINY_CROPS, roi_size=TINY_ROI, spacing=TINY_SPACING,
                          feature_size=TINY_FEATURES, lr=TINY_LR, warmup_steps=5, augment=False,
                          val_every=10**6, workers=0, seed=seed, log_every=5, checkpoint_every=10**6,
                          maps_at_output=False)


# The recipe under which the pixel–tag maps learn to find organs on a CPU (issue 12): a token grid fine
# enough that the kidneys own tokens (tiny-vit-4: 8^3 tokens of 24 mm per 32^3 window at 6 mm), lr 3e-3
# (at 1e-2 the maps go spatially constant within ~25 steps), and augmentation that never flips or turns
# the patient's left-right axis (data.transforms "flip_axes") but zooms every crop by up to 10 %: with a
# few training subjects the maps otherwise learn each organ's token position, and a small organ (spleen,
# kidney: 1-2 tokens) of a new subject of another size falls on other tokens.
MAP_BACKBONE = TINY_VIT_4
MAP_SPACING = [6.0, 6.0, 6.0]
MAP_ROI = [32, 32, 32]
MAP_LR = 3e-3
MAP_SCALE = 0.1


def map_recipe_config(data, out, steps: int, seed: int = 0, pretrained: str | None = None,
                      label_ratio: float = 1.0):
    """The maps' recipe (above) on phantoms: the tiny recipe with the maps' backbone, grid, rate and the
    recipe's augmentation, validating only at the end (no model selection)."""
    return dataclasses.replace(tiny_finetune_config(data, out, steps, seed, pretrained), backbone=MAP_BACKBONE,
                               roi_size=MAP_ROI, spacing=MAP_SPACING, lr=MAP_LR, augment=True,
                               scale_augment=MAP_SCALE, label_ratio=label_ratio, log_every=10, maps_at_output=True)


# The 2D counterpart, for the paper's U-Net claims (its Fig. 6 and Table 2): MOSMOS-U-Net with a tiny ResNet on
# axial slices of the same phantoms, 64 px at 3 mm (the 3D recipe's 192 mm field of view). The ResNet reads
# its last stage at 1/32, 2 x 2 cells a slice: too coarse a start for the output block (as tiny-vit's 2^3
# tokens were), so the paper's decoder. Rate and steps were chosen on random-init runs only (4 training and 4
# held-out phantoms of another draw than the study's, seed 0): 200 steps at 3e-3 reached held-out Dice 0.320,
# at 1e-2 0.353 (8 slices a step instead of 2: 0.357, not worth 4x the time), 1000 steps at 1e-2 0.707. 400
# steps is what 40 runs on 2 cores allow.
UNET2D_BACKBONE = TINY_RN
UNET2D_ROI = [64, 64]
UNET2D_SPACING = [3.0, 3.0, 6.0]
UNET2D_LR = 1e-2
UNET2D_STEPS = 400


def unet2d_recipe_config(data, out, steps: int, seed: int = 0, pretrained: str | None = None,
                         label_ratio: float = 1.0):
    """The maps' recipe for MOSMOS-U-Net on 2D slices: its augmentation, with the 2D grid and rate above."""
    return dataclasses.replace(map_recipe_config(data, out, steps, seed, pretrained, label_ratio), arch=UNET2D,
                               backbone=UNET2D_BACKBONE, roi_size=UNET2D_ROI, spacing=UNET2D_SPACING,
                               lr=UNET2D_LR, maps_at_output=False)


@dataclasses.dataclass(frozen=True)
class StudyRecipe:
    """What the pre-training study needs of an architecture: its fine-tuning recipe, the backbone it
    pre-trains, the phantom grid (shape, mm) whose in-plane field one fine-tuning window covers, its
    fine-tuning steps per run, and whether the pre-trained maps are fine enough (at least 4 x 4 cells a
    picture) for the study's diagnosis of where they look."""

    config: Callable
    backbone: str
    window: tuple[int, int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    steps: int
    map_diagnosis: bool


STUDY_RECIPES = {
    UNETR: StudyRecipe(map_recipe_config, MAP_BACKBONE, tuple(MAP_ROI[:2]), tuple(MAP_ROI), tuple(MAP_SPACING), 200, True),
    UNET2D: StudyRecipe(unet2d_recipe_config, UNET2D_BACKBONE, tuple(UNET2D_ROI), (64, 64, 32),
                          tuple(UNET2D_SPACING), UNET2D_STEPS, False),
}


def make_tiny_segmentation_model(path, steps: int = 30, seed: int = 0, pretrained: str | None = None) -> Path:
    """Fine-tune a tiny MOSMOS-UNETR on two generated phantoms for ``steps`` steps and write the
    model file to ``path``; from random weights, or from a MOSMOS pre-trained file."""
    from ..data.phantoms import write_decathlon_dataset
    from ..train.finetune import finetune

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="mosmos-tiny-") as tmp:
        data = Path(tmp) / "data"
        write_decathlon_dataset(data, 2, 0, seed=seed)
        model = finetune(tiny_finetune_config(data, Path(tmp) / "out", steps, seed, pretrained), progress=False)
        atomic_write_bytes(path, model.read_bytes())
    return path
