"""MOSMOS networks: CLIP encoders, the CoOp tag prompt, the tag decoder, the pre-training model and the
fine-tuning architectures (MOSMOS-UNETR, MOSMOS-U-Net). The inference engine builds a model file's
network through mosmos.models.segmentation."""
