"""`mosmos finetune`: fine-tune MOSMOS-UNETR / MOSMOS-U-Net on a Decathlon-style folder."""

from __future__ import annotations

from ..options import ARCHITECTURES, DEVICES, INITS, TRAIN_PRECISIONS

HELP = "fine-tune a segmentation model (UNETR 3D or U-Net 2D) on a Decathlon/BTCV-style dataset folder"


def add_arguments(p) -> None:
    from ..train.config import FinetuneConfig as C

    p.add_argument("--data", required=True, help="folder with dataset.json (or BTCV's dataset_0.json)")
    p.add_argument("--out", required=True, help="output folder: model file, checkpoint")
    p.add_argument("--arch", choices=ARCHITECTURES, default=C.arch,
                   help="MOSMOS-UNETR on 3D crops or MOSMOS-U-Net on 2D slices (default %(default)s)")
    p.add_argument("--backbone", default=C.backbone,
                   help="ViT-B-16, ViT-B-32, tiny-vit, tiny-vit-8, tiny-vit-4 (unetr); RN50, tiny-rn (unet2d); taken from the "
                        "pre-trained file with --init mosmos (default %(default)s)")
    p.add_argument("--init", choices=INITS, default=C.init,
                   help="start from a MOSMOS pre-trained file, CLIP weights or random weights (default %(default)s)")
    p.add_argument("--pretrained", default=None,
                   help="--init mosmos: a MOSMOS pre-trained model file; --init clip: CLIP weights")
    p.add_argument("--epochs", type=int, default=C.epochs, help="passes over the training cases (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=C.batch_size, help="volumes per step and process")
    p.add_argument("--num-samples", type=int, default=C.num_samples, help="random crops per volume")
    p.add_argument("--lr", type=float, default=C.lr, help="AdamW learning rate after warm-up (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=C.weight_decay, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=C.warmup_steps,
                   help="steps of linear warm-up before the cosine decay (default %(default)s)")
    p.add_argument("--lambda-pta", type=float, default=C.lambda_pta,
                   help="weight of the pixel-tag aligning loss (0: none; the untrained maps then join the decoder "
                        "only at the bottleneck, as with --paper-decoder)")
    p.add_argument("--label-ratio", type=float, default=C.label_ratio,
                   help="train on this fixed, seeded share of the labelled cases")
    p.add_argument("--roi-size", type=int, nargs="+", default=None, help="crop size (default 96 96 96; 2D: 224 224)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, help="mm (default 1.5 1.5 2.0)")
    p.add_argument("--feature-size", type=int, default=C.feature_size,
                   help="channels of the decoder's first stage, as MONAI UNETR's feature_size (default %(default)s)")
    p.add_argument("--no-augment", action="store_true",
                   help="no random flips, rotations, zooms or intensity shifts (crops stay random)")
    p.add_argument("--scale-augment", type=float, default=C.scale_augment,
                   help="randomly zoom each crop by a factor within 1 -/+ this (default %(default)s: none)")
    p.add_argument("--paper-decoder", action="store_true",
                   help="the pixel-tag maps join the decoder only at the bottleneck, as in the paper (default: also, "
                        "up-sampled, before the output block)")
    p.add_argument("--learn-prompt", action="store_true",
                   help="train the tags' prompt context in fine-tuning too, as the paper does (default: the tag "
                        "embeddings stay those pre-training left)")
    p.add_argument("--val-every", type=int, default=C.val_every, help="epochs between validations")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--seed", type=int, default=C.seed,
                   help="random seed of weights, crops, augmentation and the --label-ratio subset (default %(default)s)")
    p.add_argument("--workers", type=int, default=C.workers, help="data-loader processes (default %(default)s)")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, default=C.precision,
                   help="auto: bf16 on GPUs that support it, fp32 on the CPU")
    p.add_argument("--device", choices=DEVICES, default=C.device,
                   help="auto: the GPU of this process (LOCAL_RANK under torchrun) if any, else the CPU")
    p.add_argument("--checkpoint-every", type=int, default=C.checkpoint_every, help="steps")
    p.add_argument("--log-every", type=int, default=C.log_every, help="steps between step events")
    p.add_argument("--description", default="", help="free text for the model card (`mosmos info` shows it)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--events", default=None, help="JSON-lines events file ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..train.config import FinetuneConfig

    cfg = FinetuneConfig.from_args(args)
    from ..train.distributed import is_main_process  # torch: only once the options are known to be valid
    from ..train.finetune import finetune

    path = finetune(cfg, resume=args.resume, events=args.events, progress=False if args.no_progress else None)
    if is_main_process():  # under torchrun, once
        print(f"segmentation model: {path}")
    return 0
