"""`mosmos study`: the pre-training study on generated data or real folders (label budgets x inits x seeds)."""

from __future__ import annotations

from ..options import ARCHITECTURES, DEVICES

HELP = ("measure what report-supervised pre-training buys: fine-tune from the pre-trained model and from random "
        "weights at several label budgets over several seeds (table, Wilcoxon p, plot; generated data, or real "
        "ROCO and dataset folders)")


def add_arguments(p) -> None:
    p.add_argument("--out", default="study-out", help="output folder (default %(default)s)")
    p.add_argument("--budgets", type=int, nargs="+", metavar="N",
                   help="labelled training volumes per run; the largest is the whole training set (default 1 2 4)")
    p.add_argument("--ratios", type=float, nargs="+", metavar="R",
                   help="label budgets as shares of 4 labelled training volumes instead, as in the paper's Fig. 6 "
                        "(e.g. 0.25 0.5 0.75 1.0)")
    p.add_argument("--arch", choices=ARCHITECTURES,
                   help="the network fine-tuned: MOSMOS-UNETR on 3D windows (default) or MOSMOS-U-Net on 2D "
                        "slices, 2D pre-training to 2D fine-tuning with no inflation (the paper's Table 2 U-Net)")
    real = p.add_argument_group("the study on real folders (the paper's setting: CLIP weights, ROCO, BTCV)")
    real.add_argument("--roco", metavar="DIR", help="pre-train on this ROCO folder instead of phantom reports")
    real.add_argument("--data", metavar="DIR",
                      help="fine-tune on this Decathlon-layout dataset (BTCV, AMOS, MSD) and score every run on its "
                           "validation split; label budgets are --ratios of its training set (default 0.25 0.5 0.75 1)")
    real.add_argument("--weights", help="CLIP weights pre-training starts from (a local .pt file or an open_clip tag)")
    real.add_argument("--backbone", help="the CLIP backbone of --weights (default ViT-B-16 for unetr, RN50 for unet2d)")
    real.add_argument("--device", choices=DEVICES, help="where every run trains (default auto)")
    real.add_argument("--init", choices=("clip",), dest="clip_arm",
                      help="add a third arm fine-tuned from the CLIP --weights without report pre-training "
                           "(the paper's CLIP row)")
    real.add_argument("--ablate", choices=("irc", "mlr", "prompt"),
                      help="pre-train without the irc or mlr loss, or without learning the tag prompt (Table 4)")
    real.add_argument("--roi-size", type=int, nargs="+", metavar="N", help="fine-tuning window on --data")
    real.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="voxel spacing on --data")
    real.add_argument("--workers", type=int, help="data-loading processes of each run on real folders (default 4)")
    p.add_argument("--learn-prompt", action="store_true",
                   help="every run trains the tags' prompt context in fine-tuning too (mosmos finetune --learn-prompt)")
    p.add_argument("--seeds", type=int, help="seeds per budget and init (default 5)")
    p.add_argument("--steps", type=int, help="fine-tuning steps of every run (default 200 for unetr, 400 for unet2d)")
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
              budgets=args.budgets, ratios=args.ratios, arch=args.arch, seeds=args.seeds, steps=args.steps,
              roco_pairs=args.roco_pairs, pretrain_epochs=args.pretrain_epochs, reports=args.reports,
              roco=args.roco, data=args.data, weights=args.weights, backbone=args.backbone, device=args.device,
              clip_arm=args.clip_arm == "clip", ablate=args.ablate, roi_size=args.roi_size, spacing=args.spacing,
              workers=args.workers, learn_prompt=args.learn_prompt)
    return 0
