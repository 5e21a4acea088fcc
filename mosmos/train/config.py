"""Run configurations, importable without torch so that the command line starts fast."""

from __future__ import annotations

from dataclasses import dataclass


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
