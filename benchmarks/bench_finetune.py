"""Fine-tuning step cost, as ratios measured in one process:

1. MOSMOS-UNETR (CLIP ViT-B/16 encoder + tag decoder + pixel–tag maps, L_seg + 0.8 L_pta) against
   plain MONAI UNETR of the same size (ViT-B, 12 layers, hidden 768, feature size 16, Dice+CE loss),
   same input, same optimiser: target <= 1.2 (the tag branch must be cheap);
2. a MOSMOS-UNETR step fed by the real data pipeline (cached volumes, random crops and augmentation
   in loader workers) against the same step on a batch already in memory: target <= 1.1.

On a CUDA GPU both run in bf16 and peak memory is printed with the device name.

    python benchmarks/bench_finetune.py [--roi 64] [--steps 3] [--classes 14]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from timing import device_name, timed_steps


def network_ratio(roi: int, classes: int, batch: int, steps: int, device: torch.device, amp) -> dict:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNETR

    from mosmos.models.unetr import MosmosUNETR
    from mosmos.losses.finetune import MosmosSegLoss
    from mosmos.train.finetune import SegmentationObjective
    from mosmos.train.optim import autocast

    x = torch.randn(batch, 1, roi, roi, roi, device=device)
    y = torch.randint(0, classes, (batch, 1, roi, roi, roi), device=device)

    plain = UNETR(in_channels=1, out_channels=classes, img_size=roi, feature_size=16, hidden_size=768,
                  mlp_dim=3072, num_heads=12, norm_name="instance", res_block=True).to(device)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    opt_plain = torch.optim.AdamW(plain.parameters(), 1e-4)

    def plain_step():
        with autocast(device, amp):
            out = plain(x)
        loss = dice_ce(out.float(), y)
        opt_plain.zero_grad(set_to_none=True)
        loss.backward()
        opt_plain.step()

    ours = MosmosUNETR(classes, backbone="ViT-B-16", img_size=roi, feature_size=16)
    objective = SegmentationObjective(ours, MosmosSegLoss(), amp).to(device)
    opt_ours = torch.optim.AdamW(objective.parameters(), 1e-4)

    def ours_step():
        loss, _ = objective(x, y)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    row = {"roi": roi, "batch": batch, "classes": classes}
    # Alternate the two so that machine noise hits both alike.
    t_plain = [timed_steps(plain_step, steps, device)]
    peak_plain = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    t_ours = [timed_steps(ours_step, steps, device)]
    peak_ours = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    t_plain.append(timed_steps(plain_step, steps, device))
    t_ours.append(timed_steps(ours_step, steps, device))
    row.update(monai_unetr_step_s=round(min(t_plain), 3), mosmos_unetr_step_s=round(min(t_ours), 3),
               mosmos_over_monai=round(min(t_ours) / min(t_plain), 3),
               monai_params_m=round(sum(p.numel() for p in plain.parameters()) / 1e6, 1),
               mosmos_params_m=round(sum(p.numel() for p in ours.parameters()) / 1e6, 1))
    if device.type == "cuda":
        row.update(monai_peak_gb=round(peak_plain, 2), mosmos_peak_gb=round(peak_ours, 2))
    return row


def pipeline_ratio(backbone: str, roi: int, steps: int, workers: int, device: torch.device) -> dict:
    """A real FinetuneRun on generated phantoms: its steps with the loader vs on one fixed batch."""
    from mosmos.data.phantoms import write_decathlon_dataset
    from mosmos.train.config import FinetuneConfig
    from mosmos.train.finetune import FinetuneRun

    with tempfile.TemporaryDirectory() as tmp:
        write_decathlon_dataset(f"{tmp}/data", 4, 1, seed=0, shape=(128, 128, 96))
        run = FinetuneRun(FinetuneConfig(data=f"{tmp}/data", out=f"{tmp}/out", backbone=backbone, init="random",
                                         epochs=steps, roi_size=[roi] * 3, workers=workers,
                                         device=device.type))

        def step(batch):
            loss, _, _ = run.train_step(batch)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()

        fixed = next(iter(run.train_batches(0, 0)))
        t_mem = timed_steps(lambda: step(fixed), steps, device)
        batches = run.train_batches(1, 0)
        it = iter(batches)
        step(next(it))  # workers started, first batch in
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        for batch in it:
            step(batch)
            n += 1
            if n == steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_loader = (time.perf_counter() - t) / max(n, 1)
    return {"backbone": backbone, "roi": roi, "workers": workers, "step_in_memory_s": round(t_mem, 3),
            "step_with_pipeline_s": round(t_loader, 3), "pipeline_over_memory": round(t_loader / t_mem, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roi", type=int, default=None, help="crop side (default 64 on CPU, 96 on CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="default 1 on CPU, 2 on CUDA")
    ap.add_argument("--classes", type=int, default=14, help="BTCV: 13 organs + background")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pipeline-backbone", default="ViT-B-16")
    ap.add_argument("--skip", choices=["network", "pipeline"], default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    roi = args.roi or (96 if device.type == "cuda" else 64)
    name = device_name(device)
    if args.skip != "network":
        row = network_ratio(roi, args.classes, args.batch or (2 if device.type == "cuda" else 1), args.steps,
                            device, amp)
        print(json.dumps({"bench": "finetune_step_vs_monai_unetr", "device": name, "precision": str(amp), **row}),
              flush=True)
    if args.skip != "pipeline":
        row = pipeline_ratio(args.pipeline_backbone, roi, args.steps, args.workers, device)
        print(json.dumps({"bench": "finetune_step_pipeline_vs_memory", "device": name, **row}), flush=True)


if __name__ == "__main__":
    main()
