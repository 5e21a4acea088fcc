"""Run configurations, importable without torch so that the command line starts fast."""

from __future__ import annotations

from dataclasses import dataclass

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class PretrainConfig:
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


@dataclass
class FinetuneConfig:
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
    val_every: int = 50
    seed: int = 0
    workers: int = 4
    precision: str = "auto"
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None
    description: str = ""  # the model card's free text
