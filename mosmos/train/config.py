"""Run configurations, importable without torch so that the command line starts fast.

Every numeric and choice setting is checked (by the ranges and choices of mosmos.options) once, when a
configuration is made (by a command, the Slicer training module or a script): an invalid value is a one-line
MosmosError naming the option, before any work starts."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MosmosError
from ..options import ARCH_DIMS, AUTO, UNETR, VIT_B_16, check_values

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class PretrainConfig:
    """One pre-training run. Each field is the ``mosmos pretrain`` option of the same name (``batch_size`` is
    ``--batch-size``), with the same default and meaning: see the CLI reference. Invalid values raise
    MosmosError naming the option."""

    roco: str
    out: str
    backbone: str = VIT_B_16
    weights: str | None = None
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    seed: int = 0
    workers: int = 4
    precision: str = AUTO
    device: str = AUTO
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
    arch: str = UNETR
    backbone: str = VIT_B_16
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
    precision: str = AUTO
    device: str = AUTO
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None
    description: str = ""  # the model card's free text

    def __post_init__(self):
        check_values(self)
        dims = ARCH_DIMS[self.arch]
        if self.roi_size is not None and len(self.roi_size) != dims:
            raise MosmosError(f"--roi-size: --arch {self.arch} needs {dims} values, got {len(self.roi_size)}")
        if self.spacing is not None and len(self.spacing) != 3:
            raise MosmosError(f"--spacing: needs 3 values (mm), got {len(self.spacing)}")
