"""`mosmos demo`: pre-training, fine-tuning and tag-prompted segmentation on generated data."""

from __future__ import annotations

HELP = "run the whole MOSMOS story on generated data (no downloads, minutes on a CPU)"


def add_arguments(p) -> None:
    p.add_argument("--out", default="demo-out", help="output folder (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run of under two minutes")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data and the training runs (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..experiments.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, progress=False if args.no_progress else None)
    return 0
