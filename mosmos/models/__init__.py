"""MOSMOS networks. Importing this package registers the fine-tuning architectures with the
inference engine, so model files naming them can be loaded."""

from ..inference.network import register_architecture
from .segmentation import segmentation_model_from_file_state

for _arch in ("unetr", "unet2d"):
    register_architecture(_arch, segmentation_model_from_file_state)
