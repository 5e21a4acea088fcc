"""A deterministic stand-in segmentation network for the inference tests (geometry, I/O, cancel).

It is NOT the MOSMOS network: class k's logit rises with the preprocessed intensity (so a bright
object painted at a known world position must come back at that position), and its pixel–tag
maps are those logits' shape pooled by 4 (background high where the intensity is low, class 1 where
it is high). Registered as architecture "test-threshold".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mosmos.inference import register_architecture
from mosmos.files.modelfile import SEGMENTATION_KIND, save_model

WINDOW = {"type": "window", "a_min": -175, "a_max": 250, "b_min": 0.0, "b_max": 1.0, "clip": True}


class ThresholdNet(torch.nn.Module):
    """Label 1 where the preprocessed intensity exceeds the threshold; the other foreground classes'
    logits are slightly lower, so they never win."""

    def __init__(self, threshold: torch.Tensor, roi, num_classes: int):
        super().__init__()
        self.register_buffer("threshold", threshold)
        self.roi_size = tuple(roi)
        self.num_classes = num_classes
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        fg = (x - self.threshold) * 20
        logits = torch.cat([-fg] + [fg - 0.1 * k for k in range(1, self.num_classes)], dim=1)
        pooled = F.avg_pool3d(x, 4)
        maps = torch.cat([1 - pooled] + [pooled - 0.1 * k for k in range(1, self.num_classes)], dim=1)
        return logits, maps

    def open_set_maps(self, x, names):
        return 1 - F.avg_pool3d(x, 4).repeat(1, len(names), 1, 1, 1)


def _build(header, tensors):
    return ThresholdNet(tensors["threshold"], header["config"]["roi_size"], len(header["labels"]))


register_architecture("test-threshold", _build)


def write_stub_model(path, labels=None, roi=(32, 32, 32), spacing=(1.5, 1.5, 2.0), modality="CT",
                     intensity=WINDOW, epsilon=0.07) -> str:
    labels = labels or {"0": "background", "1": "liver", "2": "spleen"}
    save_model(path, {"threshold": torch.tensor(0.5)}, {
        "kind": SEGMENTATION_KIND, "config": {"arch": "test-threshold", "roi_size": list(roi)},
        "labels": labels, "modality": modality, "pixel_tag_maps": {"epsilon": epsilon},
        "preprocessing": {"orientation": "RAS", "spacing": list(spacing), "intensity": dict(intensity)},
    })
    return str(path)
