"""Fine-tuning: MOSMOS-UNETR (3D) or MOSMOS-U-Net (2D) with pixel–tag attention,
L = L_seg + lambda * L_pta, on a Medical Segmentation Decathlon-style folder (MOSMOS §3.2).

The text encoder is frozen: tag embeddings are computed once, before training, unless the CoOp context is
learnt here too (``learn_prompt``, as the paper does in both stages). Initialisations:
``mosmos`` (a MOSMOS pre-training model file), ``clip`` (CLIP weights) and ``random``."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import __version__
from ..errors import MosmosError
from ..files.modelcard import init_record, training_card
from ..files.modelfile import load_model, save_model
from . import distributed as D
from .config import FinetuneConfig
from .loop import TrainingRun
from .optim import autocast
from .sampling import ResumableSampler
from ..options import ARCH_DIMS, UNETR

MODEL_NAME = "model.safetensors"
INITS = ("mosmos", "clip", "random")


class CropDataset(Dataset):
    """Random crops of cached, pre-processed volumes; the crops of (epoch, case) are seeded by
    (seed, epoch, case), so a resumed run draws the same crops as an uninterrupted one."""

    def __init__(self, cached, seed: int):
        self.cached, self.seed = cached, seed

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        self.cached.transform.set_random_state(seed=(self.seed * 1_000_003 + epoch * 10_007 + i) % 2**32)
        return self.cached[i]


def split_cases(spec, label_ratio: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Training cases (a fixed seeded subset when label_ratio < 1) and validation cases (the
    dataset's own, else one held-out training case, else the single training case itself)."""
    from ..data.decathlon import label_subset

    train, val = list(spec.training), list(spec.validation)
    if not val:
        if len(train) > 1:
            val, train = train[-1:], train[:-1]
        else:
            val = train
    return label_subset(train, label_ratio, seed), val


def build_networks(cfg: FinetuneConfig, spec, roi: list[int]):
    """(network, tag embedder) initialised as ``cfg.init`` asks, tag embeddings set."""
    from ..models.segbase import pretrain_arch_kwargs
    from ..models.segmentation import build_network
    from ..models.segmentation import TagEmbedder

    if cfg.init not in INITS:
        raise MosmosError(f"--init {cfg.init}: choose from {', '.join(INITS)}")
    if cfg.arch not in ARCH_DIMS:
        raise MosmosError(f"--arch {cfg.arch}: choose from {', '.join(ARCH_DIMS)}")
    if cfg.init != "random" and not cfg.pretrained:
        what = "a MOSMOS pre-trained model file" if cfg.init == "mosmos" else "CLIP weights (file or open_clip tag)"
        raise MosmosError(f"--init {cfg.init} needs --pretrained: {what}")
    net_cfg: dict[str, Any] = {"arch": cfg.arch, "num_classes": spec.num_classes, "backbone": cfg.backbone,
                               "in_channels": spec.in_channels, "feature_size": cfg.feature_size,
                               # Without L_pta the maps are never trained: read at the output block they are
                               # noise at 1/epsilon the decoder cannot outweigh (a lambda-0 run labelled nothing)
                               "maps_at_output": cfg.maps_at_output and cfg.lambda_pta > 0}
    if cfg.arch == UNETR:
        net_cfg["img_size"] = roi
    if cfg.init == "mosmos":
        tensors, header = load_model(cfg.pretrained)
        net_cfg.update(pretrain_arch_kwargs(header.get("config") or {}))
        network = build_network(net_cfg)
        network.load_pretrain_state(tensors, header, source=str(cfg.pretrained))
        embedder = TagEmbedder.from_pretrain_file_state(tensors, header["config"])
        del tensors
    else:
        weights = cfg.pretrained if cfg.init == "clip" else None
        network = build_network({**net_cfg, "clip_weights": weights})
        network.config.pop("clip_weights", None)
        embedder = TagEmbedder(network.config["backbone"], network.config["quick_gelu"], weights=weights)
    network.set_tag_embeddings(embedder(spec.tags))
    return network, embedder


class SegmentationObjective(nn.Module):
    """The network and its loss as one module: under DDP the gradient of the loss's own parameter
    (the learnable epsilon) is then averaged over the ranks like the network's, so the ranks stay equal.

    forward(image, label) -> (total loss, parts); the network runs under autocast, the loss in fp32.

    With a ``tag_prompt`` (the text side's prompt learner) and the ``tags`` it embeds, the tag embeddings are
    computed from its context at every step, in fp32, so its context learns with the network.
    """

    def __init__(self, network: nn.Module, loss: nn.Module, amp_dtype: torch.dtype | None,
                 tag_prompt: nn.Module | None = None, tags: tuple[str, ...] = ()):
        super().__init__()
        self.network, self.loss = network, loss
        self.amp_dtype = amp_dtype
        self.tag_prompt, self.tags = tag_prompt, tuple(tags)
        if loss.lambda_pta == 0:  # epsilon then gets no gradient; DDP wants every trainable one to get one
            loss.requires_grad_(False)

    def forward(self, image: torch.Tensor, label: torch.Tensor):
        embeddings = None if self.tag_prompt is None else self.tag_prompt(self.tags)
        with autocast(image.device, self.amp_dtype):
            logits, maps = self.network(image, embeddings)
        return self.loss(logits.float(), maps, label)


class FinetuneRun(TrainingRun):
    stage = "finetune"
    model_name = MODEL_NAME
    score_key = "val_dice"
    higher_is_better = True

    def __init__(self, cfg: FinetuneConfig, resume: bool = False, events: str | None = None,
                 progress: bool | None = None):
        from monai.data import CacheDataset

        from ..data.decathlon import check_case, load_decathlon
        from ..data.transforms import build_train_transforms, build_val_transforms, preprocessing_config
        from ..losses.finetune import MosmosSegLoss

        super().__init__(cfg, resume, events, progress)
        cfg = self.cfg
        self.spec = spec = load_decathlon(cfg.data)
        dims = ARCH_DIMS.get(cfg.arch, 3)
        self.train_cases, self.val_cases = split_cases(spec, cfg.label_ratio, cfg.seed)
        for case in {c["name"]: c for c in self.train_cases + self.val_cases}.values():
            check_case(case, spec.labels, spatial_dims=dims, in_channels=spec.in_channels)
        roi = cfg.roi_size or ([96, 96, 96] if dims == 3 else [224, 224])
        overrides = {"spacing": cfg.spacing} if cfg.spacing else {}
        overrides["scale_range"] = cfg.scale_augment
        if not cfg.augment:  # e.g. to check that a model can memorise a case
            overrides.update(flip_prob=0.0, rot90_prob=0.0, shift_prob=0.0, scale_prob=0.0)
        self.prep = preprocessing_config(spatial_dims=dims, modality=spec.modality, roi_size=roi,
                                         num_samples=cfg.num_samples, label_values=spec.label_values, **overrides)

        network, self.embedder = build_networks(cfg, spec, self.prep["roi_size"])
        self.network = network.to(self.device)
        self.seg_loss = MosmosSegLoss(lambda_pta=cfg.lambda_pta)
        if cfg.learn_prompt:  # the prompt learner uses the text encoder without owning it: both move here
            self.embedder.to(self.device)
            self.embedder.tag_prompt.ctx.requires_grad_(True)
        objective = SegmentationObjective(self.network, self.seg_loss, self.amp_dtype,
                                          self.embedder.tag_prompt if cfg.learn_prompt else None, spec.tags)
        objective.to(self.device)

        def as_dicts(cases):
            return [{"image": str(c["image"]), "label": str(c["label"]), "name": c["name"]} for c in cases]

        cache_workers = max(1, min(4, cfg.workers))
        self.train_set = CropDataset(CacheDataset(as_dicts(self.train_cases), build_train_transforms(self.prep),
                                                  cache_rate=1.0, num_workers=cache_workers, progress=False),
                                     cfg.seed)
        self.val_set = CacheDataset(as_dicts(self.val_cases), build_val_transforms(self.prep), cache_rate=1.0,
                                    num_workers=cache_workers, progress=False)
        r, w = self.dist.rank, self.dist.world_size
        if len(self.train_set) < cfg.batch_size * w:
            raise MosmosError(f"{cfg.data}: {len(self.train_set)} training volumes, fewer than one batch of "
                              f"{cfg.batch_size} per process")
        self.sampler = ResumableSampler(len(self.train_set), cfg.batch_size, cfg.seed, True, r, w)
        self.start_optimisation(objective, self.sampler.batches_per_epoch)
        self.ddp_objective = self.ddp(objective)
        self._init_record: dict | None = None

    def start_fields(self) -> dict:
        return {"train_cases": len(self.train_cases), "val_cases": len(self.val_cases),
                "organs": self.spec.tags, "preprocessing": self.prep}

    def train_batches(self, epoch: int, skip: int):
        from monai.data import list_data_collate

        self.sampler.set_epoch(epoch, skip_batches=skip)
        return self.loader(self.train_set, self.sampler, self.cfg.batch_size, collate_fn=list_data_collate)

    def train_step(self, batch):
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        loss, parts = self.ddp_objective(image, label)
        return loss, {"seg": parts["seg"], "pta": parts["pta"]}, image.shape[0]

    def should_validate(self, epoch: int, last: bool) -> bool:
        return last or (epoch + 1) % self.cfg.val_every == 0

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Class indices (X, Y, Z) of a pre-processed volume (C, X, Y, Z), by sliding window."""
        from ..inference.sliding import sliding_window

        roi = list(self.prep["roi_size"])
        two_d = len(roi) == 2

        def predict(windows: torch.Tensor):
            x = windows[..., 0] if two_d else windows
            with autocast(self.device, self.amp_dtype):
                logits, _ = self.network(x)
            return (logits[..., None] if two_d else logits), None

        logits, _ = sliding_window(image.to(self.device), roi + [1] if two_d else roi, predict,
                                   self.spec.num_classes, 0, overlap=0.5, batch_size=4)
        return logits.argmax(0)

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        from ..evaluation.metrics import dice_scores

        names = self.spec.tags
        if self.cfg.learn_prompt:  # validation and the model file use the stored embeddings: those of the context now
            self.network.set_tag_embeddings(self.embedder(names))
        sums = torch.zeros(len(names), 2, dtype=torch.float64)  # dice sum, cases where the organ is defined
        for i in range(self.dist.rank, len(self.val_set), self.dist.world_size):
            item = self.val_set[i]
            pred = self.predict_volume(torch.as_tensor(item["image"])).cpu().numpy()
            dice = torch.from_numpy(dice_scores(pred, np.asarray(item["label"])[0], len(names) + 1))
            defined = ~dice.isnan()
            sums[defined] += torch.stack([dice[defined], torch.ones_like(dice[defined])], dim=1)
        sums = D.all_reduce_sum(sums, self.dist)
        dice = {n: (s[0] / s[1]).item() for n, s in zip(names, sums) if s[1] > 0}
        return {"val_dice": float(np.mean(list(dice.values()))) if dice else 0.0, "dice": dice}

    def save_model(self, epoch: int, val: dict) -> None:
        from ..models.segmentation import SegmentationModel

        tensors, header = SegmentationModel(self.network, self.embedder, self.prep["roi_size"],
                                            epsilon=self.seg_loss.epsilon.item()).to_file_state()
        spec = self.spec
        header.update({
            "labels": {str(v): t for v, t in spec.labels.items()},
            "label_names": {str(v): n for v, n in spec.label_names.items()},
            "modality": spec.modality,
            "channels": spec.channels,
            "preprocessing": self.prep,
            "provenance": {
                "stage": "finetune", "mosmos_version": __version__, "init": self.cfg.init,
                "pretrained": str(self.cfg.pretrained) if self.cfg.pretrained else None,
                "data": str(Path(self.cfg.data).resolve()), "train_cases": [c["name"] for c in self.train_cases],
                "val_cases": [c["name"] for c in self.val_cases], "label_ratio": self.cfg.label_ratio,
                "lambda_pta": self.cfg.lambda_pta, "epoch": epoch, "step": self.step, "seed": self.cfg.seed,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "val_dice": round(val["val_dice"], 6), "dice": {k: round(v, 6) for k, v in val["dice"].items()}},
        })
        if self._init_record is None:  # hashing a pre-trained file of hundreds of MB: once per run
            self._init_record = init_record(self.cfg.init, self.cfg.pretrained)
        header["card"] = training_card(
            stage="finetune", backbone=self.network.config["backbone"], data=self.cfg.data, data_name=spec.name,
            cases=len(self.train_cases), label_ratio=self.cfg.label_ratio, steps=self.step, epochs=epoch + 1,
            validation={"mean_dice": round(val["val_dice"], 6), "dice": header["provenance"]["dice"],
                        "cases": len(self.val_cases)},
            init=self._init_record, description=self.cfg.description)
        save_model(self.out / MODEL_NAME, tensors, header)


def finetune(cfg: FinetuneConfig, resume: bool = False, events: str | None = None,
             progress: bool | None = None) -> Path:
    """Fine-tune and return the path of the best model file (highest validation Dice).

    Args:
        cfg: the run's FinetuneConfig.
        resume: continue from OUT/checkpoint.pt.
        events: a JSON-lines events file ("-" for stdout), or None.
        progress: show a progress bar (None: when stderr is a terminal).
    """
    return FinetuneRun(cfg, resume=resume, events=events, progress=progress).run()
