"""MOSMOS: multi-organ segmentation facilitated by medical report supervision.

``import mosmos`` is cheap and needs no PyTorch: the names below are imported from their modules when first
used (``mosmos.segment``, ``mosmos.Segmenter``, ``mosmos.finetune``, ...).
"""

__version__ = "0.1.0"

import importlib

from .errors import MosmosError  # noqa: E402

_LAZY = {
    "segment": "mosmos.inference.run",
    "SegmentRequest": "mosmos.inference.request",
    "SegmentOutputs": "mosmos.inference.run",
    "Segmenter": "mosmos.inference.segmenter",
    "SegmentationResult": "mosmos.inference.segmenter",
    "PretrainConfig": "mosmos.train.config",
    "FinetuneConfig": "mosmos.train.config",
    "pretrain": "mosmos.train.pretrain",
    "finetune": "mosmos.train.finetune",
    "extract_tags": "mosmos.tags",
    "load_model": "mosmos.files.modelfile",
    "read_header": "mosmos.files.modelfile",
    "run_demo": "mosmos.experiments.demo",
    "run_study": "mosmos.experiments.study",
}

__all__ = ["MosmosError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mosmos' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
