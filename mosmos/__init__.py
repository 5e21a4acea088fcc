"""MOSMOS: multi-organ segmentation facilitated by medical report supervision."""

__version__ = "0.1.0"

from .errors import MosmosError  # noqa: E402

__all__ = ["MosmosError", "__version__"]
