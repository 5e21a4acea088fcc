"""Tiny, quickly trained models for tests, self-tests in Slicer and the demo: the real MOSMOS code
paths at a size a laptop CPU trains in seconds."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .modelfile import atomic_write_bytes

# A tiny MOSMOS-UNETR on 3 mm phantoms: 48^3 windows are 3^3 tokens of the tiny ViT.
TINY_SPACING = [3.0, 3.0, 3.0]
TINY_ROI = [48, 48, 48]
TINY_PHANTOM_SHAPE = (64, 64, 48)   # at the phantom's own 1.5 x 1.5 x 2.0 mm: the whole body


def make_tiny_segmentation_model(path, steps: int = 30, seed: int = 0, pretrained: str | None = None) -> Path:
    """Fine-tune a tiny MOSMOS-UNETR on two generated phantoms for ``steps`` steps and write the
    model file to ``path``; from random weights, or from a MOSMOS pre-trained file."""
    from .data.phantoms import write_decathlon_dataset
    from .train.config import FinetuneConfig
    from .train.finetune import finetune

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="mosmos-tiny-") as tmp:
        data = Path(tmp) / "data"
        write_decathlon_dataset(data, 2, 0, seed=seed, shape=TINY_PHANTOM_SHAPE)
        cfg = FinetuneConfig(data=str(data), out=str(Path(tmp) / "out"), arch="unetr", backbone="tiny-vit",
                             init="mosmos" if pretrained else "random", pretrained=pretrained, epochs=steps,
                             num_samples=2, roi_size=TINY_ROI, spacing=TINY_SPACING, lr=1e-3, warmup_steps=3,
                             val_every=steps, workers=0, seed=seed)
        model = finetune(cfg, progress=False)
        atomic_write_bytes(path, model.read_bytes())
    return path
