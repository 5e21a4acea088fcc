"""The options every front door offers, spelled once: architectures, CLIP backbones, devices, number formats,
compile modes, their ranges and checks.

The ground floor of the package (it imports nothing but mosmos.errors, and no torch), so the command line, the
configuration dataclasses, the Slicer modules and the web app read the same names and refuse the same values
with the same one-line MosmosError naming the option. Testing/test_options.py fails when one of these names is
spelled as a string literal anywhere else in the code.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields

from .errors import MosmosError

# Fine-tuning networks: MOSMOS-UNETR (3D windows) and MOSMOS-U-Net (2D slices), the paper's Table 2.
UNETR, UNET2D = "unetr", "unet2d"
ARCHITECTURES = (UNETR, UNET2D)
ARCH_DIMS = {UNETR: 3, UNET2D: 2}   # the windows' spatial dimensions

# CLIP backbones (open_clip names; the tiny ones are mosmos/model_configs/, for tests and the demo).
RN50, VIT_B_16, VIT_B_32 = "RN50", "ViT-B-16", "ViT-B-32"
TINY_VIT, TINY_VIT_8, TINY_VIT_4, TINY_RN = "tiny-vit", "tiny-vit-8", "tiny-vit-4", "tiny-rn"
BACKBONES = (RN50, VIT_B_16, VIT_B_32, TINY_VIT, TINY_VIT_8, TINY_VIT_4, TINY_RN)
PAPER_BACKBONES = {UNETR: VIT_B_16, UNET2D: RN50}   # the paper's encoder for each network

# Devices: auto picks a CUDA GPU when there is one. CPU and CUDA are also torch's device types.
AUTO, CPU, CUDA = "auto", "cpu", "cuda"
DEVICES = (AUTO, CPU, CUDA)
DEVICE_ALIASES = {"gpu": CUDA}

# Number formats: segmenting runs fp32 or bf16 (auto: bf16 where native); training may also use fp16.
FP32, BF16, FP16 = "fp32", "bf16", "fp16"
PRECISIONS = (AUTO, FP32, BF16)
TRAIN_PRECISIONS = (AUTO, BF16, FP16, FP32)
# torch.compile of the segmenting network (mosmos.inference.compilation): auto, always or never.
ON, OFF = "on", "off"
COMPILE_MODES = (AUTO, ON, OFF)
INITS = ("mosmos", "clip", "random")   # where a fine-tuning encoder's weights come from
ABLATIONS = ("irc", "mlr", "prompt")   # the pre-training parts the paper's Table 4 leaves out

# option -> (lowest allowed, whether the lowest itself is allowed, highest or None, whether the highest is allowed)
RANGES = {
    "epochs": (1, True, None, True),
    "batch_size": (1, True, None, True),
    "num_samples": (1, True, None, True),
    "lr": (0, False, None, True),
    "weight_decay": (0, True, None, True),
    "warmup_steps": (0, True, None, True),
    "lambda_pta": (0, True, None, True),
    "label_ratio": (0, False, 1, True),
    "feature_size": (1, True, None, True),
    "val_every": (1, True, None, True),
    "seed": (0, True, 2**32 - 1, True),
    "workers": (0, True, None, True),
    "checkpoint_every": (1, True, None, True),
    "log_every": (1, True, None, True),
    "val_fraction": (0, True, 1, False),
    "max_steps": (1, True, None, True),
    "overlap": (0, True, 1, False),
    "roi_size": (1, True, None, True),
    "spacing": (0, False, None, True),
    "scale_augment": (0, True, 1, False),
}
INTEGERS = {"epochs", "batch_size", "num_samples", "warmup_steps", "feature_size", "val_every", "seed", "workers",
            "checkpoint_every", "log_every", "max_steps", "roi_size"}
# The choices of the training configurations' fields (mosmos.train.config), by field name.
CHOICES = {"precision": TRAIN_PRECISIONS, "device": DEVICES, "arch": ARCHITECTURES, "init": INITS,
           "ablate": ABLATIONS}


def option(name: str) -> str:
    """The command-line spelling of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def check_number(name: str, value) -> None:
    """MosmosError unless ``value`` is a finite number in the range RANGES gives ``name``.

    Args:
        name: the option, a key of RANGES (``"overlap"``, ``"lr"``, ...).
        value: the value given for it.
    """
    lo, lo_in, hi, hi_in = RANGES[name]
    integral = name in INTEGERS
    kind = "a whole number" if integral else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integral and value != int(value)) \
            or not math.isfinite(value):
        raise MosmosError(f"{option(name)}: must be {kind}, got {value!r}")
    low_ok = value >= lo if lo_in else value > lo
    high_ok = hi is None or (value <= hi if hi_in else value < hi)
    if not (low_ok and high_ok):
        bounds = [f"{'>=' if lo_in else '>'} {lo}"] + ([f"{'<=' if hi_in else '<'} {hi}"] if hi is not None else [])
        raise MosmosError(f"{option(name)}: must be {' and '.join(bounds)}, got {value!r}")


def check_choice(name: str, value, choices) -> str:
    """``value`` when it is one of ``choices``, else MosmosError naming the option ``name``."""
    if value not in choices:
        raise MosmosError(f"{option(name)}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_values(cfg) -> None:
    """Every numeric and choice field of a configuration dataclass (CHOICES and RANGES by field name)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if f.name in CHOICES:
            check_choice(f.name, value, CHOICES[f.name])
        if f.name in RANGES:
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                check_number(f.name, v)


def normalize_device(device: str | None) -> str:
    """One of DEVICES from what a user typed (any case, "gpu" for cuda, empty for auto)."""
    name = (device or AUTO).strip().lower()
    name = DEVICE_ALIASES.get(name, name)
    if name not in DEVICES:
        raise MosmosError(f"device {name!r}: expected one of {', '.join(DEVICES)}")
    return name


def local_rank() -> int:
    """This process's rank on its machine under torchrun (LOCAL_RANK; 0 otherwise): the GPU a bare cuda means."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def canonical_backbone(name: str) -> str:
    """The BACKBONES spelling of ``name`` (case-insensitive), else MosmosError."""
    by_lower = {b.lower(): b for b in BACKBONES}
    key = str(name).strip().lower()
    if key not in by_lower:
        raise MosmosError(f"unknown backbone '{name}' (choose from: {', '.join(BACKBONES)})")
    return by_lower[key]
