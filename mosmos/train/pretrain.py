"""Report-supervised pre-training: L = L_irc + L_mlr on ROCO image–report pairs (MOSMOS §3.1).

Deterministic for a given seed: augmentation is seeded per (seed, epoch, sample); the loop
(resume, DDP, events) is mosmos.train.loop."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import __version__
from ..errors import MosmosError
from ..files.modelcard import init_record, training_card
from ..files.modelfile import save_model
from ..losses.pretrain import irc_loss, mlr_loss
from . import distributed as D
from .config import PretrainConfig
from .loop import TrainingRun
from .optim import autocast
from .sampling import ResumableSampler

MODEL_NAME = "pretrained.safetensors"


class PairDataset(Dataset):
    """Image transform and report tokenisation on top of a ROCO dataset, with augmentation seeded
    by (seed, epoch, index) so results do not depend on worker count or on resuming."""

    def __init__(self, base, indices, transform, tokenizer, seed: int):
        self.base, self.indices, self.transform = base, list(indices), transform
        self.tokenizer, self.seed = tokenizer, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        image, report, tags = self.base[self.indices[i]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
            pixels = self.transform(image)
        return pixels, self.tokenizer([report])[0], torch.as_tensor(tags, dtype=torch.float32)


def image_transforms(image_size: int, mean, std, train: bool):
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(mean, std)]
    if train:
        return T.Compose([T.RandomResizedCrop(image_size, scale=(0.8, 1.0),
                                              interpolation=T.InterpolationMode.BICUBIC), *norm])
    return T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(image_size), *norm])


def split_train_val(roco, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """ROCO's own validation split when the folder has one, else a seeded share of train."""
    splits = np.asarray([name for name, _ in roco.records])
    val = np.flatnonzero(splits == "validation")
    train = np.flatnonzero(splits == "train")
    if len(train) == 0:
        train = np.flatnonzero(splits != "validation")
    if len(val) == 0:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(train)
        n_val = max(1, int(round(len(perm) * val_fraction)))
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return train.tolist(), val.tolist()


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over tags with at least one positive of the average precision of the ranking."""
    aps = []
    for k in range(targets.shape[1]):
        y = targets[:, k] > 0.5
        if not y.any():
            continue
        order = np.argsort(-scores[:, k], kind="stable")
        hits = y[order]
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        aps.append(precision_at_hit.mean())
    return float(np.mean(aps)) if aps else float("nan")


class PretrainRun(TrainingRun):
    stage = "pretrain"
    model_name = MODEL_NAME
    score_key = "val_loss"

    def __init__(self, cfg: PretrainConfig, resume: bool = False, events: str | None = None,
                 progress: bool | None = None):
        from ..data.roco import RocoDataset
        from ..models.pretrain import MosmosPretrainModel

        super().__init__(cfg, resume, events, progress)
        cfg = self.cfg
        self.model = MosmosPretrainModel(cfg.backbone, weights=cfg.weights).to(self.device)
        if cfg.ablate == "prompt":
            self.model.tag_prompt.ctx.requires_grad_(False)
        roco = RocoDataset(cfg.roco)
        train_idx, val_idx = split_train_val(roco, cfg.val_fraction, cfg.seed)
        if len(train_idx) < cfg.batch_size * self.dist.world_size:
            raise MosmosError(f"{cfg.roco}: {len(train_idx)} usable training pairs, fewer than one batch "
                              f"of {cfg.batch_size} per process")
        mc = self.model.config
        tok = self.model.tokenizer
        self.train_set = PairDataset(roco, train_idx, image_transforms(mc["image_size"], mc["mean"], mc["std"], True),
                                     tok, cfg.seed)
        self.val_set = PairDataset(roco, val_idx, image_transforms(mc["image_size"], mc["mean"], mc["std"], False),
                                   tok, cfg.seed)
        r, w = self.dist.rank, self.dist.world_size
        self.train_sampler = ResumableSampler(len(self.train_set), cfg.batch_size, cfg.seed, True, r, w)
        self.val_sampler = ResumableSampler(len(self.val_set), cfg.batch_size, cfg.seed, False, r, w,
                                            drop_last=False)
        self.start_optimisation(self.model, self.train_sampler.batches_per_epoch)
        self.ddp_model = self.ddp(self.model)

    def start_fields(self) -> dict:
        return {"train_pairs": len(self.train_set), "val_pairs": len(self.val_set)}

    def train_batches(self, epoch: int, skip: int):
        self.train_sampler.set_epoch(epoch, skip_batches=skip)
        return self.loader(self.train_set, self.train_sampler, self.cfg.batch_size)

    def _losses(self, model, images, tokens, tags):
        with autocast(self.device, self.amp_dtype):
            out = model(images, tokens)
        image_f, report_f = out["image_features"].float(), out["report_features"].float()
        if self.dist.enabled:
            # InfoNCE over the global batch, as CLIP does: gather with gradients for the local part.
            import torch.distributed.nn.functional as dfn
            image_f = torch.cat(dfn.all_gather(image_f))
            report_f = torch.cat(dfn.all_gather(report_f))
        l_irc = irc_loss(image_f, report_f, out["logit_scale"].float())
        l_mlr = mlr_loss(out["tag_logits"].float(), tags)
        return l_irc, l_mlr, out["tag_logits"]

    def _to_device(self, batch):
        return [t.to(self.device, non_blocking=True) for t in batch]

    def train_step(self, batch):
        images, tokens, tags = self._to_device(batch)
        l_irc, l_mlr, _ = self._losses(self.ddp_model, images, tokens, tags)
        loss = pretrain_objective(l_irc, l_mlr, self.cfg.ablate)
        return loss, {"irc": l_irc.detach(), "mlr": l_mlr.detach()}, images.shape[0]

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        self.val_sampler.set_epoch(epoch)
        sums = torch.zeros(3, device=self.device)
        scores, targets = [], []
        for batch in self.loader(self.val_set, self.val_sampler, self.cfg.batch_size):
            images, tokens, tags = self._to_device(batch)
            l_irc, l_mlr, logits = self._losses(self.model, images, tokens, tags)
            n = images.shape[0]
            sums += torch.stack([l_irc * n, l_mlr * n, torch.tensor(float(n), device=self.device)])
            scores.append(logits.float().cpu())
            targets.append(tags.cpu())
        sums = D.all_reduce_sum(sums, self.dist)
        n = max(sums[2].item(), 1.0)
        val = {"val_irc": sums[0].item() / n, "val_mlr": sums[1].item() / n}
        val["val_loss"] = pretrain_objective(val["val_irc"], val["val_mlr"], self.cfg.ablate)
        s, t = D.all_gather_cat(torch.cat(scores), self.dist), D.all_gather_cat(torch.cat(targets), self.dist)
        val["val_map"] = mean_average_precision(s.numpy(), t.numpy())
        return val

    def save_model(self, epoch: int, val: dict) -> None:
        tensors, header = self.model.to_file_state()
        header["provenance"] = {
            "stage": "pretrain", "mosmos_version": __version__, "roco": str(Path(self.cfg.roco).resolve()),
            "train_pairs": len(self.train_set), "val_pairs": len(self.val_set), "epoch": epoch,
            "step": self.step, "seed": self.cfg.seed, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: round(v, 6) for k, v in val.items()}}
        header["card"] = training_card(
            stage="pretrain", backbone=header["config"]["backbone"], data=self.cfg.roco, cases=len(self.train_set),
            steps=self.step, epochs=epoch + 1, validation={k: round(v, 6) for k, v in val.items()},
            init=init_record("clip", self.cfg.weights) if self.cfg.weights else {"kind": "random"},
            description=self.cfg.description)
        save_model(self.out / MODEL_NAME, tensors, header)


def pretrain_objective(l_irc, l_mlr, ablate: str | None = None):
    """L = L_irc + L_mlr, less the term an ablation (PretrainConfig.ablate) leaves out."""
    return {"irc": l_mlr, "mlr": l_irc}.get(ablate, l_irc + l_mlr)


def pretrain(cfg: PretrainConfig, resume: bool = False, events: str | None = None,
             progress: bool | None = None) -> Path:
    """Pre-train and return the path of the best model file (lowest validation loss).

    Args:
        cfg: the run's PretrainConfig.
        resume: continue from OUT/checkpoint.pt.
        events: a JSON-lines events file ("-" for stdout), or None.
        progress: show a progress bar (None: when stderr is a terminal).
    """
    return PretrainRun(cfg, resume=resume, events=events, progress=progress).run()
