"""Run configurations, importable without torch so that the command line starts fast.

Every numeric setting is checked here, once, when a configuration is made (by a command, the Slicer
training module or a script): an invalid value is a one-line MosmosError naming the option, before any
work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import MosmosError

CHECKPOINT_NAME = "checkpoint.pt"
# The CLIP backbones `--backbone` accepts (case-insensitive); mosmos.models.backbones builds them.
BACKBONES = ("RN50", "ViT-B-16", "ViT-B-32", "tiny-vit", "tiny-vit-8", "tiny-vit-4", "tiny-rn")

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
CHOICES = {"precision": ("auto", "bf16", "fp16", "fp32"), "device": ("auto", "cpu", "cuda"),
           "arch": ("unetr", "unet2d"), "init": ("mosmos", "clip", "random"), "ablate": ("irc", "mlr", "prompt")}


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_number(name: str, value) -> None:
    """MosmosError unless ``value`` is a finite number in the range RANGES gives ``name``."""
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


def check_values(cfg) -> None:
    """Every numeric and choice field of a configuration."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise MosmosError(f"{option(f.name)}: must be one of {', '.join(CHOICES[f.name])}, got {value!r}")
        if f.name in RANGES:
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                check_number(f.name, v)


@dataclass
class PretrainConfig:
    """One pre-training run. Each field is the ``mosmos pretrain`` option of the same name (``batch_size`` is
    ``--batch-size``), with the same default and meaning: see the CLI reference. Invalid values raise
    MosmosError naming the option."""

    roco: str
    out: str
    backbone: str = "ViT-B-16"
    weights: str | None = None
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    seed: int = 0
    workers: int = 4
    precision: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    val_fraction: float = 0.05
    max_steps: int | None = None
    description: str = ""  # the model card's free text
    # One part of the method left out, for the paper's ablation (Table 4): "irc" or "mlr" (that loss), or
    # "prompt" (the tags' CoOp context stays at its initialisation instead of being learnt).
    ablate: str | None = None

    def __post_init__(self):
        check_values(self)


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Each field is the ``mosmos finetune`` option of the same name (``label_ratio`` is
    ``--label-ratio``; ``augment=False`` is ``--no-augment``, ``maps_at_output=False`` ``--paper-decoder``),
    with the same default and meaning: see the CLI reference. Invalid values raise MosmosError naming the
    option."""

    data: str
    out: str
    arch: str = "unetr"
    backbone: str = "ViT-B-16"
    init: str = "mosmos"
    pretrained: str | None = None
    epochs: int = 1000
    batch_size: int = 1
    num_samples: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    lambda_pta: float = 0.8
    label_ratio: float = 1.0
    roi_size: list[int] | None = None
    spacing: list[float] | None = None
    feature_size: int = 16
    augment: bool = True
    scale_augment: float = 0.0  # random zoom by up to this fraction (data.transforms "scale_range"); 0: none
    maps_at_output: bool = True  # the maps also join the last decoder features (False: the paper's decoder)
    learn_prompt: bool = False  # the tags' CoOp context is trained in fine-tuning too (the paper's Fig. 3)
    val_every: int = 50
    seed: int = 0
    workers: int = 4
    precision: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None
    description: str = ""  # the model card's free text

    def __post_init__(self):
        check_values(self)
        dims = 3 if self.arch == "unetr" else 2
        if self.roi_size is not None and len(self.roi_size) != dims:
            raise MosmosError(f"--roi-size: --arch {self.arch} needs {dims} values, got {len(self.roi_size)}")
        if self.spacing is not None and len(self.spacing) != 3:
            raise MosmosError(f"--spacing: needs 3 values (mm), got {len(self.spacing)}")
