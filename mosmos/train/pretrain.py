"""Report-supervised pre-training: L = L_irc + L_mlr on ROCO image–report pairs (MOSMOS §3.1).

Runs in one process or under ``torchrun`` (DDP); only rank 0 writes. A run is resumable from its
last checkpoint with the same final step count, and deterministic for a given seed."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..errors import MosmosError
from ..events import EventLog, progress_bar
from ..losses import irc_loss, mlr_loss
from ..modelfile import save_model
from . import distributed as D
from .config import PretrainConfig
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .optim import adamw, autocast, resolve_precision, warmup_cosine
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


class PretrainRun:
    def __init__(self, cfg: PretrainConfig, resume: bool = False, events: str | None = None,
                 progress: bool | None = None):
        from ..data.roco import RocoDataset
        from ..models.pretrain import MosmosPretrainModel

        self.out = Path(cfg.out)
        ckpt_path = self.out / CHECKPOINT_NAME
        self.state = None
        if resume:
            self.state = load_checkpoint(ckpt_path)
            saved = self.state["config"]
            # The run's recipe comes from the checkpoint; only where it runs may change.
            cfg = PretrainConfig(**{**saved, "device": cfg.device, "workers": cfg.workers, "out": cfg.out})
        self.cfg = cfg
        self.device = D.resolve_device(cfg.device, D.local_rank())
        self.dist = D.init_distributed(self.device)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.events = EventLog(events if self.dist.is_main else None)
        self.show_progress = progress if self.dist.is_main else False

        torch.manual_seed(cfg.seed)
        self.model = MosmosPretrainModel(cfg.backbone, weights=cfg.weights).to(self.device)
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
        self.steps_per_epoch = self.train_sampler.batches_per_epoch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        self.optimizer = adamw(self.model, cfg.lr, cfg.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, min(cfg.warmup_steps, self.total_steps // 10 + 1),
                                       self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.best_val, self.best_epoch = 0, math.inf, -1
        if self.state is not None:
            self.model.load_state_dict(self.state["model"])
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.scheduler.load_state_dict(self.state["scheduler"])
            self.scaler.load_state_dict(self.state["scaler"])
            self.step, self.best_val, self.best_epoch = (self.state["step"], self.state["best_val"],
                                                         self.state["best_epoch"])
        self.ddp_model = self.model
        if self.dist.enabled:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _loader(self, dataset, sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler,
                          num_workers=self.cfg.workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False, drop_last=False)

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

    @torch.no_grad()
    def validate(self, epoch: int) -> dict:
        self.model.eval()
        self.val_sampler.set_epoch(epoch)
        sums = torch.zeros(3, device=self.device)
        scores, targets = [], []
        for batch in self._loader(self.val_set, self.val_sampler):
            images, tokens, tags = self._to_device(batch)
            l_irc, l_mlr, logits = self._losses(self.model, images, tokens, tags)
            n = images.shape[0]
            sums += torch.stack([l_irc.detach() * n, l_mlr.detach() * n, torch.tensor(float(n), device=self.device)])
            scores.append(logits.float().cpu())
            targets.append(tags.cpu())
        sums = D.all_reduce_sum(sums, self.dist)
        n = max(sums[2].item(), 1.0)
        val = {"val_irc": sums[0].item() / n, "val_mlr": sums[1].item() / n}
        val["val_loss"] = val["val_irc"] + val["val_mlr"]
        s, t = torch.cat(scores), torch.cat(targets)
        if self.dist.enabled:
            s, t = D.all_gather_cat(s, self.dist), D.all_gather_cat(t, self.dist)
        val["val_map"] = mean_average_precision(s.numpy(), t.numpy())
        self.model.train()
        return val

    def _checkpoint(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.out / CHECKPOINT_NAME, {
                "config": asdict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "best_val": self.best_val,
                "best_epoch": self.best_epoch})
            self.events.emit("checkpoint", step=self.step)

    def _save_model(self, epoch: int, val: dict) -> None:
        if not self.dist.is_main:
            return
        tensors, header = self.model.to_file_state()
        header["provenance"] = {
            "stage": "pretrain", "mosmos_version": __version__, "roco": str(Path(self.cfg.roco).resolve()),
            "train_pairs": len(self.train_set), "val_pairs": len(self.val_set), "epoch": epoch,
            "step": self.step, "seed": self.cfg.seed, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **{k: round(v, 6) for k, v in val.items()}}
        save_model(self.out / MODEL_NAME, tensors, header)

    def run(self) -> Path:
        cfg = self.cfg
        self.events.emit("start", stage="pretrain", config=asdict(cfg), world_size=self.dist.world_size,
                         steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps, resumed_step=self.step,
                         train_pairs=len(self.train_set), val_pairs=len(self.val_set))
        self.model.train()
        bar = progress_bar(self.total_steps, "pre-training", initial=self.step, enabled=self.show_progress)
        t_start, steps_at_start, images_seen = time.perf_counter(), self.step, 0
        while self.step < self.total_steps:
            epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
            self.train_sampler.set_epoch(epoch, skip_batches=done_in_epoch)
            for batch in self._loader(self.train_set, self.train_sampler):
                images, tokens, tags = self._to_device(batch)
                l_irc, l_mlr, _ = self._losses(self.ddp_model, images, tokens, tags)
                loss = l_irc + l_mlr
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                images_seen += images.shape[0] * self.dist.world_size
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - t_start
                    rate = (self.step - steps_at_start) / max(elapsed, 1e-9)
                    self.events.emit("step", step=self.step, epoch=epoch, loss=loss.item(), irc=l_irc.item(),
                                     mlr=l_mlr.item(), lr=self.scheduler.get_last_lr()[0],
                                     images_per_s=images_seen / max(elapsed, 1e-9),
                                     eta_s=(self.total_steps - self.step) / max(rate, 1e-9),
                                     total_steps=self.total_steps)
                end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                if end_of_epoch:
                    self._end_epoch(epoch)
                if self.step % cfg.checkpoint_every == 0 or end_of_epoch:
                    self._checkpoint()
                if self.step >= self.total_steps or end_of_epoch:
                    break
        bar.close()
        self.events.emit("done", stage="pretrain", step=self.step, model=str(self.out / MODEL_NAME),
                         best_epoch=self.best_epoch, best_val_loss=self.best_val,
                         rank_digests=D.gather_digests(self.model.state_dict(), self.dist))
        D.barrier(self.dist)
        self.events.close()
        D.cleanup(self.dist)
        return self.out / MODEL_NAME

    def _end_epoch(self, epoch: int) -> None:
        val = self.validate(epoch)
        improved = val["val_loss"] < self.best_val
        if improved:
            self.best_val, self.best_epoch = val["val_loss"], epoch
            self._save_model(epoch, val)
        self.events.emit("epoch", epoch=epoch, step=self.step, best=improved, **val)


def pretrain(cfg: PretrainConfig, resume: bool = False, events: str | None = None,
             progress: bool | None = None) -> Path:
    """Pre-train and return the path of the best model file (lowest validation loss)."""
    return PretrainRun(cfg, resume=resume, events=events, progress=progress).run()
