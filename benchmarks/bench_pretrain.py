"""Pre-training throughput: model step time and images/s, and data-loader images/s beside it.

The loader must not be the bottleneck: the printed ratio loader/model must be > 1. On a CUDA GPU
the full ViT-B/16 runs at batch 256 in bf16 (the paper's backbone), and the GPU is named.

    python benchmarks/bench_pretrain.py [--backbones tiny-vit ViT-B-16] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from mosmos.data.phantoms import write_roco_folder
from mosmos.data.roco import RocoDataset
from mosmos.losses.pretrain import irc_loss, mlr_loss
from mosmos.models.pretrain import MosmosPretrainModel
from mosmos.train.optim import adamw, autocast, resolve_precision
from mosmos.train.pretrain import PairDataset, image_transforms
from mosmos.train.sampling import ResumableSampler
from timing import device_name, timed_steps


def model_step_rate(backbone: str, batch: int, steps: int, device: torch.device) -> dict:
    model = MosmosPretrainModel(backbone).to(device)
    opt = adamw(model, 1e-5, 0.1)
    amp = resolve_precision("auto", device)
    size = model.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = model.tokenize(["axial CT of the liver and the right kidney"] * batch)
    tags = (torch.rand(batch, len(model.tags), device=device) > 0.7).float()

    def step():
        with autocast(device, amp):
            out = model(images, tokens)
        loss = irc_loss(out["image_features"].float(), out["report_features"].float(), out["logit_scale"].float()) \
            + mlr_loss(out["tag_logits"].float(), tags)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dt = timed_steps(step, steps, device)
    out = {"backbone": backbone, "device": device_name(device), "batch": batch, "precision": str(amp),
           "step_s": round(dt, 4), "model_images_per_s": round(batch / dt, 1)}
    if device.type == "cuda":
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def loader_rate(backbone: str, batch: int, batches: int, workers: int) -> float:
    model_cfg = MosmosPretrainModel(backbone).config
    with tempfile.TemporaryDirectory() as root:
        # Real-size JPEGs on disk, decoded and augmented as in training.
        write_roco_folder(root, batch * batches, seed=0, image_size=model_cfg["image_size"] * 2,
                          splits=("train",))
        roco = RocoDataset(root)
        from mosmos.models.text import get_tokenizer

        ds = PairDataset(roco, range(len(roco)), image_transforms(model_cfg["image_size"], model_cfg["mean"],
                                                                  model_cfg["std"], True),
                         get_tokenizer(backbone), seed=0)
        sampler = ResumableSampler(len(ds), batch, seed=0)
        sampler.set_epoch(0)
        loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
        t = time.perf_counter()
        n = sum(b[0].shape[0] for b in loader)
        return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["tiny-vit", "ViT-B-16"])
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on CPU (8 for full size), 256 on CUDA")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for backbone in args.backbones:
        tiny = backbone.startswith("tiny")
        batch = args.batch or (256 if device.type == "cuda" else (64 if tiny else 8))
        row = model_step_rate(backbone, batch, args.steps, device)
        row["loader_images_per_s"] = round(loader_rate(backbone, min(batch, 64), 4, args.workers), 1)
        row["loader_workers"] = args.workers
        row["loader_over_model"] = round(row["loader_images_per_s"] / row["model_images_per_s"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
