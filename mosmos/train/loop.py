"""The training loop shared by pre-training and fine-tuning.

A run is resumable from its last checkpoint with the same final step count (the data order of an
epoch depends only on the seed and the epoch), runs unchanged under ``torchrun`` (only rank 0
writes), shows a progress bar on a terminal and writes JSON-lines events for programs."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..files.events import EventLog, progress_bar
from ..files.outputs import check_output, check_output_folder
from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .config import CHECKPOINT_NAME
from .optim import adamw, resolve_precision, warmup_cosine
from ..options import CUDA

# Where a run executes may change on resume; what it computes comes from the checkpoint.
RUNTIME_FIELDS = ("device", "workers", "out")


class TrainingRun:
    """Subclasses set ``stage`` and ``model_name`` and implement ``train_step``, ``validate`` and
    ``save_model``; they call ``start_optimisation`` once their modules exist."""

    stage = ""
    model_name = ""
    score_key = ""          # validation metric that selects the best model
    higher_is_better = False

    def __init__(self, cfg, resume: bool = False, events: str | None = None, progress: bool | None = None):
        self.out = Path(cfg.out)
        self.check_outputs(cfg, events)
        self.state = load_checkpoint(self.out / CHECKPOINT_NAME) if resume else None
        if self.state is not None:
            saved = self.state["config"]
            cfg = type(cfg)(**{**saved, **{k: getattr(cfg, k) for k in RUNTIME_FIELDS}})
        self.cfg = cfg
        self.device = D.resolve_device(cfg.device, D.local_rank())
        self.dist = D.init_distributed(self.device)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        self.events = EventLog(events if self.dist.is_main else None)
        self.show_progress = progress if self.dist.is_main else False
        self.step, self.best, self.best_epoch = 0, -math.inf if self.higher_is_better else math.inf, -1
        torch.manual_seed(cfg.seed)

    # --- set-up -----------------------------------------------------------------------------

    def check_outputs(self, cfg, events: str | None) -> None:
        """Before any work: the output folder, model file, checkpoint and event log destroy no input and
        replace only this program's own files of the same kind."""
        inputs = [getattr(cfg, name, None) for name in ("roco", "data", "pretrained", "weights")]
        check_output_folder(self.out, inputs)
        model, checkpoint = self.out / self.model_name, self.out / CHECKPOINT_NAME
        check_output(model, "model file", inputs)
        check_output(checkpoint, "checkpoint", inputs)
        if events not in (None, "-") and not hasattr(events, "write"):
            check_output(events, "event log", inputs, others=[model, checkpoint])

    def start_optimisation(self, trainable: nn.Module, steps_per_epoch: int) -> None:
        """Optimiser, schedule and scaler over ``trainable``; restores them on resume."""
        cfg = self.cfg
        self.trainable = trainable
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.optimizer = adamw(trainable, cfg.lr, cfg.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, min(cfg.warmup_steps, self.total_steps // 10 + 1),
                                       self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if self.state is not None:
            trainable.load_state_dict(self.state["model"])
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.scheduler.load_state_dict(self.state["scheduler"])
            self.scaler.load_state_dict(self.state["scaler"])
            self.step, self.best, self.best_epoch = self.state["step"], self.state["best"], self.state["best_epoch"]

    def ddp(self, module: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return module
        # an ablated loss leaves some parameters out of the graph, which DDP must be told to expect
        return nn.parallel.DistributedDataParallel(
            module, device_ids=[self.device.index] if self.device.type == CUDA else None,
            find_unused_parameters=getattr(self.cfg, "ablate", None) in ("irc", "mlr"))

    def loader(self, dataset, sampler, batch_size: int, collate_fn=None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.cfg.workers,
                          pin_memory=self.device.type == CUDA, collate_fn=collate_fn,
                          # workers kept between epochs: restarting them re-imports torch and re-opens the data
                          persistent_workers=self.cfg.workers > 0)

    # --- hooks ------------------------------------------------------------------------------

    def train_batches(self, epoch: int, skip: int):
        """The batches of ``epoch`` after the first ``skip`` ones."""
        raise NotImplementedError

    def train_step(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(loss to back-propagate, detached parts to log, images in the batch on this rank)."""
        raise NotImplementedError

    def validate(self, epoch: int) -> dict[str, Any]:
        raise NotImplementedError

    def save_model(self, epoch: int, val: dict[str, Any]) -> None:
        raise NotImplementedError

    def should_validate(self, epoch: int, last: bool) -> bool:
        return True

    def start_fields(self) -> dict[str, Any]:
        return {}

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> Path:
        cfg = self.cfg
        self.events.emit("start", stage=self.stage, config=asdict(cfg), world_size=self.dist.world_size,
                         device=str(self.device), backend=self.dist.backend, steps_per_epoch=self.steps_per_epoch,
                         total_steps=self.total_steps, resumed_step=self.step, **self.start_fields())
        self.trainable.train()
        bar = progress_bar(self.total_steps, self.stage, initial=self.step, enabled=self.show_progress)
        t_start, steps_at_start, images_seen = time.perf_counter(), self.step, 0
        while self.step < self.total_steps:
            epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
            for batch in self.train_batches(epoch, done_in_epoch):
                loss, parts, n_images = self.train_step(batch)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.step += 1
                images_seen += n_images * self.dist.world_size
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = max(time.perf_counter() - t_start, 1e-9)
                    rate = (self.step - steps_at_start) / elapsed
                    self.events.emit("step", step=self.step, epoch=epoch, loss=loss.item(),
                                     **{k: float(v) for k, v in parts.items()},
                                     lr=self.scheduler.get_last_lr()[0], images_per_s=images_seen / elapsed,
                                     eta_s=(self.total_steps - self.step) / max(rate, 1e-9),
                                     total_steps=self.total_steps)
                last = self.step == self.total_steps
                end_of_epoch = self.step % self.steps_per_epoch == 0 or last
                validated = end_of_epoch and self.should_validate(epoch, last)
                if validated:
                    self._validate_and_keep_best(epoch)
                # Resuming works from any step, so short epochs need not each cost a checkpoint.
                if self.step % cfg.checkpoint_every == 0 or validated:
                    self._checkpoint()
                if last or end_of_epoch:
                    break
        bar.close()
        self.events.emit("done", stage=self.stage, step=self.step, model=str(self.out / self.model_name),
                         best_epoch=self.best_epoch, **{f"best_{self.score_key}": self.best},
                         rank_digests=D.gather_digests(self.trainable.state_dict(), self.dist))
        D.barrier(self.dist)
        self.events.close()
        D.cleanup(self.dist)
        return self.out / self.model_name

    def _validate_and_keep_best(self, epoch: int) -> None:
        self.trainable.eval()
        val = self.validate(epoch)
        self.trainable.train()
        score = val[self.score_key]
        improved = score > self.best if self.higher_is_better else score < self.best
        if improved:
            self.best, self.best_epoch = score, epoch
            if self.dist.is_main:
                self.save_model(epoch, val)
        self.events.emit("val", epoch=epoch, step=self.step, best=improved, **val)

    def _checkpoint(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.out / CHECKPOINT_NAME, {
                "config": asdict(self.cfg), "model": self.trainable.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "best": self.best,
                "best_epoch": self.best_epoch})
            self.events.emit("checkpoint", step=self.step)
