"""Segmentation inference: model file + volume + organ names -> label map, attention maps, volumes."""

from .network import ARCHITECTURES, SegmentationNetwork, load_segmentation_model, register_architecture
from .segmenter import SegmentationResult, Segmenter
from .sliding import Cancelled

__all__ = ["ARCHITECTURES", "Cancelled", "SegmentationNetwork", "SegmentationResult", "Segmenter",
           "load_segmentation_model", "register_architecture"]
