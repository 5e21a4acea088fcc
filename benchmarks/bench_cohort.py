"""Cohort throughput of `mosmos segment --inputs DIR --out DIR` (one model load per process) in cases per hour, for
1 and 2 processes (torchrun, cases split by rank), as ratios against the baseline: a shell loop of one
`mosmos segment CASE --output ...` call per case (a new process, imports and model load per case). All on the CPU,
the threads shared out so that every run uses the same cores (2 processes: 1 thread each on 2 cores).

The model is a MOSMOS-UNETR of the given backbone with random weights (timing does not depend on them); the cases
are CT-like volumes of the given shape.

    python benchmarks/bench_cohort.py [--cases 6] [--shape 64 64 32] [--backbone tiny-vit] [--roi 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from bench_segment import write_random_model


def write_cases(folder: Path, n: int, shape) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        vol = rng.normal(-900, 30, shape).astype(np.int16)
        vol[shape[0] // 4: 3 * shape[0] // 4, shape[1] // 4: 3 * shape[1] // 4] = 40   # a soft-tissue block
        nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0])), folder / f"case{i:03d}.nii.gz")


def timed(cmd: str, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_cohort: failed: {cmd}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    ap.add_argument("--backbone", default="tiny-vit")
    ap.add_argument("--roi", type=int, default=32)
    ap.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    py = sys.executable
    torchrun = shutil.which("torchrun", path=str(Path(py).parent)) or "torchrun"
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.safetensors"
        write_random_model(model, args.backbone, args.roi)
        write_cases(tmp / "in", args.cases, args.shape)
        common = f"--model {model} --device cpu --compile off"
        loop = (f"for f in {tmp}/in/*.nii.gz; do {py} -m mosmos segment \"$f\" {common} "
                f"--output {tmp}/loop/$(basename \"$f\"); done")
        (tmp / "loop").mkdir()
        runs = {
            "shell loop of `mosmos segment` (baseline)": timed(loop, args.cores),
            "--inputs, 1 process": timed(f"{py} -m mosmos segment --inputs {tmp}/in --out {tmp}/one {common}",
                                         args.cores),
            "--inputs, torchrun 2 processes": timed(
                f"{torchrun} --standalone --nproc-per-node 2 -m mosmos segment --inputs {tmp}/in --out {tmp}/two "
                f"{common}", max(1, args.cores // 2)),
        }
    base = runs["shell loop of `mosmos segment` (baseline)"]
    print(f"{args.cases} cases of {'x'.join(map(str, args.shape))}, {args.backbone} roi {args.roi}, "
          f"{args.cores} CPU cores")
    print(f"{'run':45s} {'seconds':>8s} {'cases/h':>8s} {'vs loop':>8s}")
    for name, seconds in runs.items():
        print(f"{name:45s} {seconds:8.1f} {3600 * args.cases / seconds:8.0f} {base / seconds:8.2f}")


if __name__ == "__main__":
    main()
