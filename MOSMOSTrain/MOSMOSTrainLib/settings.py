"""A training run's settings and the `mosmos pretrain|finetune` command line they make (the contract in
README "Training"), with the paper's defaults."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from mosmos.errors import MosmosError
from mosmos.mrml.process import interpreter
from mosmos.options import (ARCHITECTURES, BACKBONES, DEVICES, INITS,  # noqa: F401  (DEVICES: the widget's)
                            check_number, normalize_device)
from mosmos.train.config import FinetuneConfig, PretrainConfig

from .folders import CHECKPOINT_NAME, given

STAGES = ("pretrain", "finetune")
INITIALIZATIONS = INITS

# The core's defaults, which are the paper's (Tian et al., arXiv 2409.02418): pre-training AdamW 1e-5; fine-tuning
# follows UNETR on BTCV (AdamW 1e-4, one volume per batch, 25,000 iterations ~ 1,000 epochs of 24 volumes),
# L = L_seg + 0.8 L_pta, all labels.
# Attributes, not getattr calls: the Extensions Index's review allows no call at a module file's import.
PRETRAIN_DEFAULTS = {"epochs": PretrainConfig.epochs, "batch_size": PretrainConfig.batch_size,
                     "lr": PretrainConfig.lr}
FINETUNE_DEFAULTS = {"epochs": FinetuneConfig.epochs, "batch_size": FinetuneConfig.batch_size,
                     "lr": FinetuneConfig.lr, "lambda_pta": FinetuneConfig.lambda_pta,
                     "label_ratio": FinetuneConfig.label_ratio}


@dataclasses.dataclass
class TrainingSettings:
    stage: str  # "pretrain" or "finetune"
    out: Path
    roco: Path | None = None  # pretrain
    dataset: Path | None = None  # finetune
    backbone: str = PretrainConfig.backbone
    weights: str = ""  # pretrain: CLIP weights file or open_clip tag ("openai"); empty: random initialisation
    architecture: str = FinetuneConfig.arch
    init: str = FinetuneConfig.init
    pretrained: Path | None = None  # finetune: MOSMOS pre-trained model (init mosmos) or CLIP weights (init clip)
    epochs: int | None = None  # None: the stage's default
    batch_size: int | None = None
    lr: float | None = None
    lambda_pta: float = FINETUNE_DEFAULTS["lambda_pta"]
    label_ratio: float = FINETUNE_DEFAULTS["label_ratio"]
    device: str = FinetuneConfig.device
    workers: int = FinetuneConfig.workers
    seed: int = FinetuneConfig.seed
    checkpoint_every: int = FinetuneConfig.checkpoint_every
    log_every: int | None = None  # None: the command's default
    max_steps: int | None = None
    roi_size: tuple[int, int, int] | None = None  # finetune crop; None: the command's default (96 cubed)
    num_samples: int | None = None  # finetune crops per volume; None: the command's default

    def __post_init__(self) -> None:
        defaults = PRETRAIN_DEFAULTS if self.stage == "pretrain" else FINETUNE_DEFAULTS
        for key in ("epochs", "batch_size", "lr"):
            if getattr(self, key) is None:
                setattr(self, key, defaults[key])
        self.out = given(self.out)
        self.roco, self.dataset, self.pretrained = given(self.roco), given(self.dataset), given(self.pretrained)

    @property
    def checkpoint(self) -> Path | None:
        return self.out / CHECKPOINT_NAME if self.out else None

    def validate(self) -> None:
        """MosmosError naming the first setting that cannot work."""
        if self.stage not in STAGES:
            raise MosmosError(f"stage {self.stage!r}: expected one of {', '.join(STAGES)}")
        if self.out is None:
            raise MosmosError("output folder: not selected")
        normalize_device(self.device)
        if self.backbone.lower() not in {b.lower() for b in BACKBONES}:
            raise MosmosError(f"backbone {self.backbone!r}: expected one of {', '.join(BACKBONES)}")
        # The core's ranges, so the module refuses exactly what the command line refuses.
        for name in ("epochs", "batch_size", "checkpoint_every", "lr"):
            check_number(name, getattr(self, name))
        if self.stage == "pretrain":
            if self.roco is None:
                raise MosmosError("ROCO folder: not selected")
            return
        if self.dataset is None:
            raise MosmosError("dataset folder: not selected")
        if self.architecture not in ARCHITECTURES:
            raise MosmosError(f"architecture {self.architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
        if self.init not in INITIALIZATIONS:
            raise MosmosError(f"initialisation {self.init!r}: expected one of {', '.join(INITIALIZATIONS)}")
        if self.init == "mosmos" and self.pretrained is None:
            raise MosmosError("pre-trained model: required to fine-tune from MOSMOS pre-training "
                              "(the pre-training output's pretrained.safetensors)")
        if self.pretrained is not None and self.init != "random" and not self.pretrained.is_file():
            raise MosmosError(f"{self.pretrained}: pre-trained model file not found")
        for name in ("label_ratio", "lambda_pta"):
            check_number(name, getattr(self, name))
        if self.roi_size is not None and (len(self.roi_size) != 3 or min(int(n) for n in self.roi_size) < 1):
            raise MosmosError(f"ROI size {self.roi_size}: expected three positive sizes")

    def config(self) -> PretrainConfig | FinetuneConfig:
        """The core's configuration of this run (checked there too), which the command line is made from."""
        self.validate()
        common = dict(out=os.fspath(self.out), backbone=self.backbone, epochs=int(self.epochs),
                      batch_size=int(self.batch_size), lr=float(self.lr), seed=int(self.seed),
                      workers=int(self.workers), device=normalize_device(self.device),
                      checkpoint_every=int(self.checkpoint_every), max_steps=int(self.max_steps or 0) or None)
        if self.log_every:   # otherwise the command's default
            common["log_every"] = int(self.log_every)
        if self.stage == "pretrain":
            return PretrainConfig(roco=os.fspath(self.roco), weights=self.weights.strip() or None, **common)
        if self.num_samples:
            common["num_samples"] = int(self.num_samples)
        return FinetuneConfig(
            data=os.fspath(self.dataset), arch=self.architecture, init=self.init,
            pretrained=os.fspath(self.pretrained) if self.pretrained is not None and self.init != "random" else None,
            lambda_pta=float(self.lambda_pta), label_ratio=float(self.label_ratio),
            roi_size=[int(n) for n in self.roi_size] if self.roi_size else None, **common)

    def command(self, resume: bool = False, python: str | None = None) -> list[str]:
        """The child process's argv (the configuration's own, FromArgs.to_argv), events as JSON lines on stdout."""
        argv = [python or interpreter(), "-m", "mosmos", self.stage, *self.config().to_argv()]
        if resume:
            argv.append("--resume")
        return argv + ["--events", "-", "--no-progress"]
