"""Segmentation inference: model file + volume + organ names -> label map, attention maps, volumes.

``mosmos.inference.request`` (what a run asks for) needs no PyTorch: the names below are imported from their
modules when first used, so importing a light submodule does not load torch."""

import importlib

_LAZY = {
    "ARCHITECTURES": "mosmos.inference.network",
    "SegmentationNetwork": "mosmos.inference.network",
    "load_segmentation_model": "mosmos.inference.network",
    "register_architecture": "mosmos.inference.network",
    "SegmentationResult": "mosmos.inference.segmenter",
    "Segmenter": "mosmos.inference.segmenter",
    "Cancelled": "mosmos.inference.sliding",
    "SegmentRequest": "mosmos.inference.request",
    "segment": "mosmos.inference.run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mosmos.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
