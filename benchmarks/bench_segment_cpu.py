"""`mosmos segment` on the CPU: a full abdominal CT, exact and --fast, against plain MONAI.

In one process, on the same generated volume (default 512x512x300 at 0.8 x 0.8 x 2.5 mm: a phantom
abdomen whose body fills about two thirds of the field of view, air with scanner noise around it),
with the same ViT-B-16 MOSMOS-UNETR (random weights; timing does not depend on them) and overlap:

- MOSMOS exact (default: the reference grid of windows less those holding no body within a margin,
  bf16 where the CPU has it natively, compiled by torch.compile when the run is long enough to pay
  for it: --compile) and --fast (overlap 0.25, windows tiling the body's box, those
  holding no body skipped), end to end through the command's code (read, load the model, resample,
  windows, stitch, map back, write; tags "liver, spleen, kidneys" with attention maps), per stage,
  with the windows each ran and skipped;
- plain MONAI ``sliding_window_inference`` (gaussian, fp32, every window) of the same network on the
  same model-grid image: target exact <= 0.35 x this;
- peak RSS, minor page faults and CPU seconds of each mode as a child process (`python -m mosmos
  segment`, through a small launcher's RUSAGE_CHILDREN).

    python benchmarks/bench_segment_cpu.py [--size 512 512 300] [--threads N] [--no-rss] [--profile]
                                           [--compile auto|on|off]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from bench_segment import write_random_model

TAGS = "liver, spleen, right kidney, left kidney"
SPACING = (0.8, 0.8, 2.5)
BODY_FRACTION = 0.75  # of the in-plane field of view the phantom's (0.9 x 0.7 wide) body box spans


def abdomen(size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU (size) and its affine: a phantom drawn at 1/4 resolution, linearly up-sampled, in air."""
    from scipy import ndimage

    from mosmos.data.phantoms import make_phantom, phantom_affine

    inner = [max(8, round(s * BODY_FRACTION)) for s in size[:2]] + [size[2]]
    coarse = [max(4, s // 4) for s in inner]
    small = make_phantom(seed, coarse, [sp * n / c for sp, n, c in zip(SPACING, inner, coarse)]).image
    body = ndimage.zoom(small, [n / c for n, c in zip(inner, coarse)], order=1)
    ct = np.random.default_rng(seed).normal(-1000, 15, size).astype(np.int16)
    lo = [(s - n) // 2 for s, n in zip(size, body.shape)]
    ct[tuple(slice(a, a + n) for a, n in zip(lo, body.shape))] = np.round(body).astype(np.int16)
    return ct, phantom_affine(size, SPACING)


class Stages:
    """Seconds per stage of one `mosmos segment` run, by wrapping the functions that do each stage."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.run = {}

    @contextmanager
    def patched(self):
        from mosmos.inference import io, segmenter

        originals = []

        def wrap(owner, name, stage):
            fn = getattr(owner, name)
            originals.append((owner, name, fn))

            def timed(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    self.seconds[stage] += time.perf_counter() - t
            setattr(owner, name, timed)

        wrap(io, "read_volume", "read")
        wrap(segmenter.Segmenter, "__init__", "load model")
        wrap(segmenter.Segmenter, "_model_image", "resample")
        wrap(segmenter, "sliding_window", "windows+stitch")
        wrap(segmenter.KeptOutputs, "labels_on_input", "map back")
        wrap(segmenter.AttentionMaps, "__getitem__", "map back")
        wrap(io, "_write_now", "write")
        segment = segmenter.Segmenter.segment

        def segment_and_count(seg, *a, **k):  # the run's windows (run, skipped) and precision
            result = segment(seg, *a, **k)
            self.run = dict(result.run)
            return result
        segmenter.Segmenter.segment = segment_and_count
        originals.append((segmenter.Segmenter, "segment", segment))
        predictor = segmenter.Segmenter._predictor

        def timed_predictor(seg, *a, **k):
            predict = predictor(seg, *a, **k)

            def timed(windows):
                t = time.perf_counter()
                try:
                    return predict(windows)
                finally:
                    self.seconds["windows"] += time.perf_counter() - t
            return timed
        segmenter.Segmenter._predictor = timed_predictor
        originals.append((segmenter.Segmenter, "_predictor", predictor))
        try:
            yield self
        finally:
            for owner, name, fn in reversed(originals):
                setattr(owner, name, fn)

    def table(self) -> dict:
        s = dict(self.seconds)
        s["stitch"] = s.pop("windows+stitch", 0.0) - s.get("windows", 0.0)
        return {k: round(v, 2) for k, v in s.items()}


def segment_argv(volume, model, out: Path, mode: str, compile: str = "auto") -> list[str]:
    return ["segment", str(volume), "--model", str(model), "--output", str(out / f"{mode}.nii.gz"), "--tags", TAGS,
            "--attention", str(out / f"att_{mode}"), "--device", "cpu", "--compile", compile] + \
        (["--fast"] if mode == "fast" else [])


# A small launcher between this process and the measured one: Linux carries a process's peak RSS
# across fork and exec, so a child forked from this (GB-sized) process would report this one's.
LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(code, u.ru_maxrss, u.ru_minflt, "
            "u.ru_utime + u.ru_stime)")


def child_usage(argv: list[str]) -> tuple[float, int, float]:
    """(peak RSS in GiB, minor page faults, CPU seconds) of `python -m mosmos *argv` as a child."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-m", "mosmos", *argv],
                         capture_output=True, text=True, check=True).stdout.split()
    if out[0] != "0":
        raise SystemExit(f"child {' '.join(argv)} failed ({out[0]})")
    return int(out[1]) / 2**20, int(out[2]), float(out[3])  # Linux: ru_maxrss in KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], help="volume size in voxels")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
    ap.add_argument("--no-rss", action="store_true", help="skip the child-process peak-RSS runs")
    ap.add_argument("--profile", action="store_true", help="torch.profiler table of one exact run")
    ap.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                    help="`mosmos segment --compile` (auto: compiled for 64 windows or more)")
    args = ap.parse_args()

    from monai.inferers import sliding_window_inference

    from mosmos.cli import main as mosmos_main
    from mosmos.inference import Segmenter
    from mosmos.inference.geometry import model_grid
    from mosmos.inference.network import load_segmentation_model
    from mosmos.inference.precision import cpu_has_native_bf16
    from mosmos.inference.segmenter import cpu_count

    threads = args.threads or cpu_count()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the child processes
    result = {"bench": "segment_cpu", "cpu": cpu_name(), "threads": threads, "load_1min": os.getloadavg()[0],
              "native_bf16": cpu_has_native_bf16(), "size": args.size, "spacing": SPACING}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import nibabel as nib

        ct, affine = abdomen(args.size)
        volume = tmp / "ct.nii.gz"
        nib.save(nib.Nifti1Image(ct, affine), volume)
        model = tmp / "vitb.mosmos"
        write_random_model(model, "ViT-B-16", 96)
        seg = Segmenter(model, device="cpu")
        grid = model_grid(ct.shape, affine, seg.preprocessing.spacing)
        result["model_grid"] = list(grid.shape)

        runs = {}
        for mode in ("exact", "fast"):
            stages = Stages()
            with stages.patched():
                t = time.perf_counter()
                code = mosmos_main(segment_argv(volume, model, tmp, mode, args.compile))
                runs[mode] = time.perf_counter() - t
            assert code == 0, mode
            result[f"{mode}_s"] = round(runs[mode], 2)
            result[f"{mode}_stages_s"] = stages.table()
            result[f"{mode}_run"] = stages.run
        exact_labels = np.asarray(nib.load(tmp / "exact.nii.gz").dataobj)
        fast_labels = np.asarray(nib.load(tmp / "fast.nii.gz").dataobj)
        result["fast_label_agreement_random_weights"] = round(float((exact_labels == fast_labels).mean()), 4)

        plain, _ = load_segmentation_model(model)  # the network as trained (not the Segmenter's channels-last one)
        with torch.inference_mode():
            image = seg._model_image(ct, grid, seg.device)
            t = time.perf_counter()
            sliding_window_inference(image[None], seg.roi_size, 1, lambda x: plain(x)[0], overlap=0.5,
                                     mode="gaussian")
            result["monai_fp32_sliding_window_s"] = round(time.perf_counter() - t, 2)
            del image
        for mode in ("exact", "fast"):
            result[f"{mode}_over_monai"] = round(runs[mode] / result["monai_fp32_sliding_window_s"], 3)

        if not args.no_rss:
            for mode in ("exact", "fast"):
                rss, faults, cpu = child_usage(segment_argv(volume, model, tmp, mode, args.compile))
                result[f"{mode}_peak_rss_gib"], result[f"{mode}_minor_faults"] = round(rss, 2), faults
                result[f"{mode}_child_cpu_s"] = round(cpu, 1)
        print(json.dumps(result), flush=True)

        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                mosmos_main(segment_argv(volume, model, tmp, "exact", args.compile))
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    main()
