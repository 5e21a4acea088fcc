"""`mosmos segment` on the CPU as a user meets it: a full abdominal CT, exact and --fast, on a machine that
has never compiled the network (cold) and again once it has (warm), against plain MONAI in the same run.

On one generated volume (default 512x512x300 at 0.8 x 0.8 x 2.5 mm: a phantom abdomen whose body fills
about two thirds of the field of view, air with scanner noise around it), with one ViT-B-16 MOSMOS-UNETR
(random weights; timing does not depend on them), tags "liver, spleen, right kidney, left kidney" with
attention maps:

- plain MONAI ``sliding_window_inference`` (gaussian, fp32, every window, overlap 0.5) of the same network
  on the same model-grid image, in this process with the allocator setting `mosmos segment` uses
  (mosmos.inference.allocator): the baseline every ratio divides by;
- cold: `python -m mosmos segment` (exact, then --fast) as child processes with an empty inductor cache (a
  fresh TORCHINDUCTOR_CACHE_DIR), as on a new machine, a new Slicer install or a new container;
- then `--compile on` (exact) in that cache folder: what building the compiled code costs, once;
- warm: exact and --fast again with that cache folder (`--compile auto` reads the record the compiled run
  left there).

Each child's wall time includes Python's start and imports (a user's command does), with its seconds per
stage from its --json-progress "stage" events, its windows (run, skipped, compiled), peak RSS and CPU
seconds.

    python benchmarks/bench_segment_cpu.py [--size 512 512 300] [--threads N] [--no-warm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
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


def segment_argv(volume, model, out: Path, mode: str, compile: str = "auto") -> list[str]:
    return ["segment", str(volume), "--model", str(model), "--output", str(out / f"{mode}.nii.gz"), "--tags", TAGS,
            "--attention", str(out / f"att_{mode}"), "--device", "cpu", "--compile", compile] + \
        (["--fast"] if mode == "fast" else [])


# A small launcher between this process and the measured one: Linux carries a process's peak RSS across fork
# and exec, so a child forked from this (GB-sized) process would report this one's.
LAUNCHER = ("import resource, subprocess, sys; out = open(sys.argv[1], 'w'); code = subprocess.call(sys.argv[2:], "
            "stdout=out, stderr=subprocess.DEVNULL); u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(code, u.ru_maxrss, u.ru_utime + u.ru_stime)")


def child_run(argv: list[str], cache: Path, events: Path) -> dict:
    """`python -m mosmos *argv --json-progress` as a child with inductor's cache in ``cache``: wall seconds,
    seconds per stage, its run event, peak RSS (GiB) and CPU seconds."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LAUNCHER, str(events), sys.executable, "-m", "mosmos", *argv,
                          "--json-progress"], capture_output=True, text=True, check=True, env=env).stdout.split()
    wall = time.perf_counter() - start
    if out[0] != "0":
        raise SystemExit(f"child {' '.join(argv)} failed ({out[0]})")
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    run = next(e for e in lines if e["event"] == "run")
    return {"s": round(wall, 1), "stages_s": {e["stage"]: round(e["seconds"], 1) for e in lines
                                              if e["event"] == "stage"},
            "windows": run["windows"], "windows_skipped": run["windows_skipped"], "compiled": run["compiled"],
            "precision": run["precision"], "peak_rss_gib": round(int(out[1]) / 2**20, 2),  # ru_maxrss: KiB
            "cpu_s": round(float(out[2]), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=[512, 512, 300], help="volume size in voxels")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable CPUs)")
    ap.add_argument("--no-warm", action="store_true", help="only the cold runs (no compile, no warm runs)")
    args = ap.parse_args()

    from monai.inferers import sliding_window_inference

    from mosmos.inference import Segmenter
    from mosmos.inference.allocator import keep_window_buffers
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

        plain, _ = load_segmentation_model(model)  # the network as trained (not the Segmenter's channels-last one)
        keep_window_buffers()  # the allocator setting `mosmos segment` uses: no page faults held against MONAI
        with torch.inference_mode():
            image = seg._model_image(ct, grid, seg.device)
            t = time.perf_counter()
            sliding_window_inference(image[None], seg.roi_size, 1, lambda x: plain(x)[0], overlap=0.5,
                                     mode="gaussian")
            monai = result["monai_fp32_sliding_window_s"] = round(time.perf_counter() - t, 1)
        del image, seg

        cache = tmp / "inductor"   # empty: no compiled code, no record
        runs = [("cold", "exact", "auto"), ("cold", "fast", "auto")]
        if not args.no_warm:
            runs += [("build", "exact", "on"), ("warm", "exact", "auto"), ("warm", "fast", "auto")]
        for state, mode, compile in runs:
            name = f"{state}_{mode}" + ("_compile_on" if compile == "on" else "")
            run = child_run(segment_argv(volume, model, tmp, mode, compile), cache, tmp / f"{name}.jsonl")
            run["over_monai"] = round(run["s"] / monai, 3)
            result[name] = run
            print(json.dumps({name: run}), file=sys.stderr, flush=True)
        labels = {mode: np.asarray(nib.load(tmp / f"{mode}.nii.gz").dataobj) for mode in ("exact", "fast")}
        result["fast_label_agreement_random_weights"] = round(float((labels["exact"] == labels["fast"]).mean()), 4)
        print(json.dumps(result), flush=True)


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
