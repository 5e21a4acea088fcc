"""Peak memory and time of `Segmenter.segment` on a 512x512x300 synthetic CT, on the CPU.

The network is a stub of roughly the real one's output size (14 classes, maps at 1/16) whose compute
is negligible, so the numbers measure the engine (reading, resampling, stitching, label mapping,
one attention map) against the 6 GB peak-RSS budget. The lead extends this with the real network.

    python benchmarks/bench_segment_memory.py [--shape 512 512 300] [--tags "liver, spleen"]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from mosmos.inference import Segmenter, register_architecture
from mosmos.files.modelfile import SEGMENTATION_KIND, save_model

LABELS = {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney", "4": "gallbladder",
          "5": "esophagus", "6": "liver", "7": "stomach", "8": "aorta", "9": "inferior vena cava",
          "10": "portal vein and splenic vein", "11": "pancreas", "12": "right adrenal gland",
          "13": "left adrenal gland"}


class BenchNet(torch.nn.Module):
    def __init__(self, roi):
        super().__init__()
        self.roi_size = tuple(roi)
        self.mix = torch.nn.Conv3d(1, len(LABELS), 1)

    def forward(self, x):
        return self.mix(x), F.avg_pool3d(self.mix(x), 16)


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kb / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    p.add_argument("--tags", default="liver")
    args = p.parse_args()
    register_architecture("bench-stub", lambda header, tensors: BenchNet(header["config"]["roi_size"]))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "bench.mosmos"
        torch.manual_seed(0)
        net = BenchNet((96, 96, 96))
        save_model(model, dict(net.state_dict()), {
            "kind": SEGMENTATION_KIND, "config": {"arch": "bench-stub", "roi_size": [96, 96, 96]}, "labels": LABELS,
            "modality": "CT", "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0], "intensity": {
                "type": "window", "a_min": -175, "a_max": 250, "b_min": 0, "b_max": 1, "clip": True}}})
        seg = Segmenter(model, device="cpu")
        seg.network.load_state_dict(net.state_dict())
        rng = np.random.default_rng(0)
        ct = rng.normal(0, 30, size=args.shape).astype(np.int16) - 1000
        ct[64:448, 64:448, :] += 1040
        affine = np.diag([0.7, 0.7, 1.0, 1.0])
        base = psutil.Process().memory_info().rss / 2**30
        t0 = time.perf_counter()
        windows = []
        res = seg.segment(ct, affine, tags=args.tags, progress=lambda d, t: windows.append(t) or True)
        t1 = time.perf_counter()
        maps = {tag: res.attention[tag] for tag in res.attention}
        t2 = time.perf_counter()
    print(f"input {tuple(args.shape)} int16 ({ct.nbytes / 2**30:.2f} GiB), model grid "
          f"{tuple(int(round((n - 1) * s / m)) + 1 for n, s, m in zip(args.shape, (0.7, 0.7, 1.0), (1.5, 1.5, 2.0)))}, "
          f"{windows[-1]} window batches, {torch.get_num_threads()} threads")
    print(f"segment: {t1 - t0:.1f} s; attention maps ({len(maps)}) on the input grid: {t2 - t1:.1f} s")
    print(f"RSS before segment: {base:.2f} GiB; peak RSS: {peak_rss_gb():.2f} GiB (budget 6 GiB)")
    return 0 if peak_rss_gb() < 6 else 1


if __name__ == "__main__":
    sys.exit(main())
