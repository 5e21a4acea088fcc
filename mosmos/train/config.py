"""Run configurations, importable without torch so that the command line starts fast.

Every numeric and choice setting is checked (by the ranges and choices of mosmos.options) once, when a
configuration is made (by a command, the Slicer training module or a script): an invalid value is a one-line
MosmosError naming the option, before any work starts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ..errors import MosmosError
from ..options import ARCH_DIMS, AUTO, INITS, UNETR, VIT_B_16, check_values

CHECKPOINT_NAME = "checkpoint.pt"
# Fields whose command-line flag turns them off: field -> the flag's argparse name (--no-augment, --paper-decoder).
NEGATED_FLAGS = {"augment": "no_augment", "maps_at_output": "paper_decoder"}


class FromArgs:
    """``from_args``: a configuration from the parsed arguments of its command, each field from the option of
    the same name (NEGATED_FLAGS inverted), and ``to_argv`` its inverse, so no front end maps the fields by
    hand."""

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        """The configuration of ``mosmos pretrain`` / ``mosmos finetune`` arguments.

        Args:
            args: the command's parsed arguments (mosmos.commands.pretrain / finetune add_arguments).
        """
        return cls(**{f.name: not getattr(args, NEGATED_FLAGS[f.name]) if f.name in NEGATED_FLAGS
                      else getattr(args, f.name) for f in fields(cls)})

    def to_argv(self) -> list[str]:
        """The command's arguments that make this configuration again (``from_args`` of their parse), for the
        child process the Slicer training module starts: each field that differs from its default (which is the
        option's) as its option, a list as its values, a flag (``--learn-prompt``, ``--no-augment``) alone."""
        argv = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if isinstance(value, bool):
                argv.append("--" + (NEGATED_FLAGS[f.name] if f.name in NEGATED_FLAGS else f.name).replace("_", "-"))
            else:
                values = value if isinstance(value, (list, tuple)) else [value]
                argv += ["--" + f.name.replace("_", "-"), *(str(v) for v in values)]
        return argv


@dataclass
class PretrainConfig(FromArgs):
    """One pre-training run. Each field is the ``mosmos pretrain`` option of the same name (``batch_size`` is
    ``--batch-size``), with the same default and meaning. Invalid values raise MosmosError naming the option.

    Args:
        roco: the ROCO folder (GitHub layout or CSV variant).
        out: the output folder (model file, checkpoint).
        backbone: the CLIP backbone, one of mosmos.options.BACKBONES.
        weights: CLIP weights: a local file (open_clip or OpenAI .pt) or an open_clip tag such as "openai";
            None: random initialisation.
        epochs: passes over the training images.
        batch_size: images per step and process.
        lr: the AdamW learning rate after warm-up.
        weight_decay: the AdamW weight decay.
        warmup_steps: steps of linear warm-up before the cosine decay.
        seed: the random seed of weights, order and augmentation.
        workers: data-loader processes.
        precision: "auto" (bf16 on GPUs that support it, fp32 on the CPU), "bf16", "fp16" or "fp32".
        device: "auto" (the GPU of this process, LOCAL_RANK under torchrun, if any), "cpu" or "cuda".
        checkpoint_every: steps between checkpoints.
        log_every: steps between step events.
        val_fraction: the share of train held out when the folder has no validation split.
        max_steps: stop after this many steps (None: after ``epochs``).
        description: the model card's free text.
        ablate: one part of the method left out, for the paper's ablation (Table 4): "irc" or "mlr" (that
            loss), or "prompt" (the tags' CoOp context stays at its initialisation instead of being learnt).
    """

    roco: str
    out: str
    backbone: str = VIT_B_16
    weights: str | None = None
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    seed: int = 0
    workers: int = 4
    precision: str = AUTO
    device: str = AUTO
    checkpoint_every: int = 500
    log_every: int = 10
    val_fraction: float = 0.05
    max_steps: int | None = None
    description: str = ""
    ablate: str | None = None

    def __post_init__(self):
        check_values(self)


@dataclass
class FinetuneConfig(FromArgs):
    """One fine-tuning run. Each field is the ``mosmos finetune`` option of the same name (``label_ratio`` is
    ``--label-ratio``; ``augment=False`` is ``--no-augment``, ``maps_at_output=False`` ``--paper-decoder``),
    with the same default and meaning. Invalid values raise MosmosError naming the option.

    Args:
        data: the dataset folder with dataset.json (or BTCV's dataset_0.json).
        out: the output folder (model file, checkpoint).
        arch: "unetr" (MOSMOS-UNETR on 3D crops) or "unet2d" (MOSMOS-U-Net on 2D slices).
        backbone: the CLIP backbone (mosmos.options.BACKBONES); taken from the pre-trained file with
            ``init="mosmos"``.
        init: "mosmos" (a MOSMOS pre-trained file), "clip" (CLIP weights) or "random".
        pretrained: with init "mosmos" a MOSMOS pre-trained model file; with init "clip" CLIP weights.
        epochs: passes over the training cases.
        batch_size: volumes per step and process.
        num_samples: random crops per volume.
        lr: the AdamW learning rate after warm-up.
        weight_decay: the AdamW weight decay.
        warmup_steps: steps of linear warm-up before the cosine decay.
        lambda_pta: the weight of the pixel–tag aligning loss (0: none).
        label_ratio: train on this fixed, seeded share of the labelled cases.
        roi_size: the crop size (None: 96 96 96; 2D: 224 224).
        spacing: the voxel spacing in mm (None: 1.5 1.5 2.0).
        feature_size: channels of the decoder's first stage, as MONAI UNETR's feature_size.
        augment: random flips, rotations, zooms and intensity shifts (crops stay random either way).
        scale_augment: random zoom by up to this fraction (data.transforms "scale_range"); 0: none.
        maps_at_output: the maps also join the last decoder features (False: the paper's decoder).
        learn_prompt: the tags' CoOp context is trained in fine-tuning too (the paper's Fig. 3).
        val_every: epochs between validations.
        seed: the random seed of weights, order and augmentation.
        workers: data-loader processes.
        precision: "auto", "bf16", "fp16" or "fp32".
        device: "auto", "cpu" or "cuda".
        checkpoint_every: steps between checkpoints.
        log_every: steps between step events.
        max_steps: stop after this many steps (None: after ``epochs``).
        description: the model card's free text.
    """

    data: str
    out: str
    arch: str = UNETR
    backbone: str = VIT_B_16
    init: str = INITS[0]
    pretrained: str | None = None
    epochs: int = 1000
    batch_size: int = 1
    num_samples: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 500
    lambda_pta: float = 0.8
    label_ratio: float = 1.0
    roi_size: list[int] | None = None
    spacing: list[float] | None = None
    feature_size: int = 16
    augment: bool = True
    scale_augment: float = 0.0
    maps_at_output: bool = True
    learn_prompt: bool = False
    val_every: int = 50
    seed: int = 0
    workers: int = 4
    precision: str = AUTO
    device: str = AUTO
    checkpoint_every: int = 500
    log_every: int = 10
    max_steps: int | None = None
    description: str = ""

    def __post_init__(self):
        check_values(self)
        dims = ARCH_DIMS[self.arch]
        if self.roi_size is not None and len(self.roi_size) != dims:
            raise MosmosError(f"--roi-size: --arch {self.arch} needs {dims} values, got {len(self.roi_size)}")
        if self.spacing is not None and len(self.spacing) != 3:
            raise MosmosError(f"--spacing: needs 3 values (mm), got {len(self.spacing)}")
