"""`mosmos pretrain`: report-supervised pre-training on a local ROCO folder."""

from __future__ import annotations

from ..options import ABLATIONS, DEVICES, TRAIN_PRECISIONS

HELP = "pre-train MOSMOS encoders on a ROCO folder of radiology images with their reports"


def add_arguments(p) -> None:
    from ..train.config import PretrainConfig as C

    p.add_argument("--roco", required=True, help="ROCO folder (GitHub layout or CSV variant)")
    p.add_argument("--out", required=True, help="output folder: model file, checkpoint")
    p.add_argument("--backbone", default=C.backbone, help="RN50, ViT-B-16, ViT-B-32, tiny-vit, tiny-vit-8, tiny-vit-4, tiny-rn (default %(default)s)")
    p.add_argument("--weights", default=None, help="CLIP weights: a local file (open_clip or OpenAI .pt) or an open_clip tag such as 'openai'")
    p.add_argument("--epochs", type=int, default=C.epochs, help="passes over the training images (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=C.batch_size, help="per process (default %(default)s)")
    p.add_argument("--lr", type=float, default=C.lr, help="AdamW learning rate after warm-up (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=C.weight_decay, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=C.warmup_steps,
                   help="steps of linear warm-up before the cosine decay (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--seed", type=int, default=C.seed, help="random seed of weights, order and augmentation (default %(default)s)")
    p.add_argument("--workers", type=int, default=C.workers, help="data-loader processes")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, default=C.precision,
                   help="auto: bf16 on GPUs that support it, fp32 on the CPU")
    p.add_argument("--device", choices=DEVICES, default=C.device,
                   help="auto: the GPU of this process (LOCAL_RANK under torchrun) if any, else the CPU")
    p.add_argument("--checkpoint-every", type=int, default=C.checkpoint_every, help="steps")
    p.add_argument("--log-every", type=int, default=C.log_every, help="steps between step events")
    p.add_argument("--val-fraction", type=float, default=C.val_fraction,
                   help="share of train held out when the folder has no validation split")
    p.add_argument("--ablate", choices=ABLATIONS, default=None,
                   help="leave one part of the method out (the paper's ablation): the irc or mlr loss, or the "
                        "learnt tag prompt (its context stays as initialised)")
    p.add_argument("--description", default="", help="free text for the model card (`mosmos info` shows it)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--events", default=None, help="JSON-lines events file ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..train.config import PretrainConfig

    cfg = PretrainConfig.from_args(args)
    from ..train.distributed import is_main_process  # torch: only once the options are known to be valid
    from ..train.pretrain import pretrain

    path = pretrain(cfg, resume=args.resume, events=args.events, progress=False if args.no_progress else None)
    if is_main_process():  # under torchrun, once
        print(f"pre-trained model: {path}")
    return 0
