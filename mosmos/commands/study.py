"""`mosmos study`: the pre-training study on generated data (label budgets x inits x seeds)."""

from __future__ import annotations

HELP = ("measure what report-supervised pre-training buys: fine-tune from the pre-trained model and from random "
        "weights at several label budgets over several seeds (table, Wilcoxon p, plot; generated data)")


def add_arguments(p) -> None:
    p.add_argument("--out", default="study-out", help="output folder (default %(default)s)")
    p.add_argument("--budgets", type=int, nargs="+", metavar="N",
                   help="labelled training volumes per run; the largest is the whole training set (default 1 2 4)")
    p.add_argument("--seeds", type=int, help="seeds per budget and init (default 5)")
    p.add_argument("--steps", type=int, help="fine-tuning steps of every run (default 200)")
    p.add_argument("--roco-pairs", type=int, help="phantom image-report pairs to pre-train on (default 1600)")
    p.add_argument("--pretrain-epochs", type=int, help="pre-training epochs (default 10)")
    p.add_argument("--reports", choices=("visible", "findings"),
                   help="what the phantom reports name: every organ visible in the picture (default), or only "
                        "the organs given a small finding, as most ROCO captions do")
    p.add_argument("--jobs", type=int, default=1,
                   help="fine-tuning runs at once, one process each (default %(default)s; results do not depend on it)")
    p.add_argument("--quick", action="store_true", help="a smoke run: one budget, one seed, two steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..experiments.study import run_study

    run_study(args.out, quick=args.quick, progress=False if args.no_progress else None, jobs=args.jobs,
              budgets=args.budgets, seeds=args.seeds, steps=args.steps, roco_pairs=args.roco_pairs,
              pretrain_epochs=args.pretrain_epochs, reports=args.reports)
    return 0
