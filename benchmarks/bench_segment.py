"""Inference cost of `mosmos segment`, as ratios measured in one process on the same volume:

1. MOSMOS-UNETR sliding-window inference (our gaussian-blended windows, logits + pixel–tag maps)
   against plain MONAI UNETR of the same size through monai.inferers.sliding_window_inference
   (gaussian, same roi, overlap and window batch): target <= 1.15;
2. end-to-end ``Segmenter.segment`` (orientation, resampling, intensity, windows, label mapping
   back to the input grid, one attention map) against the network-only sliding window: target <= 1.3;
3. the same end to end with the attention map as P(organ wins) (softmax over every labelled class of
   the up-sampled maps / epsilon, per window) against the raw up-sampled scores (``attention_raw``).

Weights are random (timing does not depend on them). On a CUDA GPU the default volume is a
512x512x200 CT at 0.8 x 0.8 x 2.5 mm, in bf16, with the device named; on the CPU a smaller one.

    python benchmarks/bench_segment.py [--shape 256 256 100] [--spacing 1.5 1.5 2.0] [--backbone ViT-B-16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import device_name

LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gallbladder",
          "5": "esophagus", "6": "liver", "7": "stomach", "8": "aorta", "9": "inferior vena cava",
          "10": "portal vein and splenic vein", "11": "pancreas", "12": "right adrenal gland",
          "13": "left adrenal gland"}


def write_random_model(path: Path, backbone: str, roi: int) -> None:
    from mosmos.data.transforms import preprocessing_config
    from mosmos.files.modelfile import save_model
    from mosmos.models.segmentation import SegmentationModel, TagEmbedder
    from mosmos.models.unetr import MosmosUNETR

    net = MosmosUNETR(len(LABELS), backbone=backbone, img_size=roi)
    model = SegmentationModel(net, TagEmbedder(net.config["backbone"], net.config["quick_gelu"]), [roi] * 3)
    tensors, header = model.to_file_state()
    header.update(labels=LABELS, modality="CT", preprocessing=preprocessing_config(roi_size=[roi] * 3))
    save_model(path, tensors, header)


def synced(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=None)
    ap.add_argument("--spacing", type=float, nargs=3, default=None)
    ap.add_argument("--backbone", default="ViT-B-16")
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNETR

    from mosmos.inference import Segmenter
    from mosmos.inference.geometry import model_grid
    from mosmos.inference.sliding import sliding_window

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    shape = args.shape or ([512, 512, 200] if cuda else [192, 192, 80])
    spacing = args.spacing or ([0.8, 0.8, 2.5] if cuda else [1.5, 1.5, 2.0])
    name = device_name(device)
    rng = np.random.default_rng(0)
    ct = rng.normal(0, 200, size=shape).astype(np.int16)
    affine = np.diag([*spacing, 1.0])

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "random.safetensors"
        write_random_model(model_file, args.backbone, args.roi)
        seg = Segmenter(model_file, device=device.type)
        ours = seg.network
        grid = model_grid(ct.shape, affine, seg.preprocessing.spacing)
        image = seg._model_image(ct, grid, device)
        roi = (args.roi,) * 3
        batch = 4 if cuda else 1
        n_classes = len(LABELS)

        def predict(windows):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits, maps = ours(windows)
            return logits, None

        plain = UNETR(in_channels=1, out_channels=n_classes, img_size=args.roi, feature_size=16, hidden_size=768,
                      mlp_dim=3072, num_heads=12, norm_name="instance", res_block=True).to(device).eval()

        def monai_run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                return sliding_window_inference(image[None], roi, batch, plain, overlap=0.5, mode="gaussian")

        times = {"monai": [], "ours": [], "segment": []}
        with torch.inference_mode():
            monai_run()  # warm-up both
            sliding_window(image, roi, predict, n_classes, 0, 0.5, batch)
            for _ in range(args.repeats):
                times["monai"].append(synced(monai_run, device)[1])
                times["ours"].append(synced(lambda: sliding_window(image, roi, predict, n_classes, 0, 0.5, batch),
                                            device)[1])

        def end_to_end(raw: bool = False):
            res = seg.segment(ct, affine, tags=["liver"], attention_raw=raw)
            return res.attention["liver"]

        times["segment_raw"] = []
        for _ in range(args.repeats):
            times["segment"].append(synced(end_to_end, device)[1])
            times["segment_raw"].append(synced(lambda: end_to_end(raw=True), device)[1])

    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({
        "bench": "segment", "device": name, "backbone": args.backbone, "input_shape": shape, "input_spacing": spacing,
        "model_grid": list(grid.shape), "roi": args.roi,
        "monai_unetr_sliding_window_s": round(best["monai"], 3),
        "mosmos_unetr_sliding_window_s": round(best["ours"], 3),
        "mosmos_over_monai": round(best["ours"] / best["monai"], 3),
        "segment_end_to_end_s": round(best["segment"], 3),
        "end_to_end_over_network": round(best["segment"] / best["ours"], 3),
        "segment_raw_attention_s": round(best["segment_raw"], 3),
        "probabilities_over_raw": round(best["segment"] / best["segment_raw"], 3)}), flush=True)


if __name__ == "__main__":
    main()
