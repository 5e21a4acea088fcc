"""Size and load cost of a segmentation model file (format 2: fp16 weights, text tower read lazily), as
ratios measured in one process on the same random-weight network (pretrained=None, no download):

1. file size against the same tensors in fp32 safetensors (what format 1 wrote): target <= 0.5, and a
   ViT-B-16 MOSMOS-UNETR with 13 organs and its text tower <= 350 MB;
2. time to load the model for segmenting known organs (``load_segmentation_model``: the network's tensors
   only) against that plus reading, verifying and building the text tower (what every load did before).

    python benchmarks/bench_model_file.py [--backbone ViT-B-16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_segment import LABELS
from timing import device_name


def main() -> None:
    from safetensors.torch import save_file

    from mosmos.inference.network import load_segmentation_model
    from mosmos.files.modelfile import save_model
    from mosmos.models.segbase import build_network
    from mosmos.models.segmentation import SegmentationModel, TagEmbedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="ViT-B-16")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = build_network({"arch": "unetr", "num_classes": len(LABELS), "backbone": args.backbone,
                         "in_channels": 1, "feature_size": 16, "img_size": [96, 96, 96]})
    embedder = TagEmbedder(net.config["backbone"], net.config["quick_gelu"])
    tensors, header = SegmentationModel(net, embedder, [96] * 3).to_file_state()
    header.update(labels=LABELS, modality="CT", preprocessing={"roi_size": [96] * 3})
    text_bytes = sum(v.numel() * v.element_size() for k, v in tensors.items() if k.startswith("text."))
    with tempfile.TemporaryDirectory() as tmp:
        fp32, v2 = Path(tmp) / "fp32.safetensors", Path(tmp) / "v2.safetensors"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(fp32))
        save_model(v2, tensors, header)
        t = time.perf_counter()
        model, _ = load_segmentation_model(v2, "cpu")
        known = time.perf_counter() - t
        t = time.perf_counter()
        model._text_side()  # what loading always did before: read, verify and build the text tower too
        whole = known + time.perf_counter() - t
        print(json.dumps({"bench": "model_file", "backbone": args.backbone, "device": device_name(torch.device("cpu")),
                          "size_MB": round(v2.stat().st_size / 1e6, 1),
                          "fp32_size_MB": round(fp32.stat().st_size / 1e6, 1),
                          "size_ratio_vs_fp32": round(v2.stat().st_size / fp32.stat().st_size, 3),
                          "text_tower_fp32_MB": round(text_bytes / 1e6, 1),
                          "load_known_organs_s": round(known, 2), "load_with_text_tower_s": round(whole, 2),
                          "load_ratio_vs_with_text_tower": round(known / whole, 2)}))


if __name__ == "__main__":
    main()
