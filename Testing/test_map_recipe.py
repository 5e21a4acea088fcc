"""The pixel–tag maps learn to find organs under the shipped recipe (issue 12, item 1): `mosmos finetune` with
``experiments.recipes.map_recipe_config`` on phantoms, scored on held-out phantoms, against a lambda-0 control.

In a file of its own: at 2 x 800 steps it is the suite's longest test, and the two xdist workers
(``--dist loadfile``) then run it beside test_finetune.py instead of after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mosmos.cli import main
from mosmos.data.phantoms import write_decathlon_dataset
from mosmos.evaluation.metrics import dice_scores
from mosmos.train.config import FinetuneConfig

MAP_ORGANS = ("liver", "spleen", "right kidney", "left kidney", "stomach")
# 800 steps: at 400 the spleen and left kidney maps stop at 0.59, at 600 the spleen at 0.599 (seed 0, README)
MAP_STEPS = 800


def recipe_cli_args(cfg: FinetuneConfig) -> list[str]:
    """`mosmos finetune` arguments that ask for exactly the recipe of ``cfg``."""
    args = ["finetune", "--data", cfg.data, "--out", cfg.out, "--arch", cfg.arch, "--backbone", cfg.backbone,
            "--init", cfg.init, "--epochs", str(cfg.epochs), "--max-steps", str(cfg.max_steps),
            "--num-samples", str(cfg.num_samples), "--lr", str(cfg.lr), "--warmup-steps", str(cfg.warmup_steps),
            "--lambda-pta", str(cfg.lambda_pta), "--roi-size", *map(str, cfg.roi_size),
            "--spacing", *map(str, cfg.spacing), "--feature-size", str(cfg.feature_size),
            "--weight-decay", str(cfg.weight_decay), "--scale-augment", str(cfg.scale_augment),
            "--val-every", str(cfg.val_every), "--seed", str(cfg.seed), "--workers", str(cfg.workers),
            "--log-every", str(cfg.log_every), "--checkpoint-every", str(cfg.checkpoint_every), "--no-progress"]
    return args + ([] if cfg.augment else ["--no-augment"]) + ([] if cfg.maps_at_output else ["--paper-decoder"])


@torch.no_grad()
def held_out_dices(model: Path, data: Path) -> dict[str, dict[str, float]]:
    """Per-organ Dice on the dataset's validation cases (pre-processed and padded to the window as in training) of
    the network's segmentation ("network") and of the pixel–tag maps alone ("maps": argmax of the maps up-sampled to
    the label grid)."""
    from monai.transforms import SpatialPad

    from mosmos.data.decathlon import load_decathlon
    from mosmos.data.transforms import build_val_transforms
    from mosmos.inference.network import load_segmentation_model
    from mosmos.losses.finetune import upsample_maps

    network, header = load_segmentation_model(model)
    spec = load_decathlon(data)
    transform, pad = build_val_transforms(header["preprocessing"]), SpatialPad(header["preprocessing"]["roi_size"])
    scores = {"network": [], "maps": []}
    for case in spec.validation:
        item = transform({"image": str(case["image"]), "label": str(case["label"])})
        image, label = (torch.as_tensor(pad(torch.as_tensor(item[k])))[None] for k in ("image", "label"))
        logits, maps = network(image)
        for kind, pred in (("network", logits.float().argmax(1)),
                           ("maps", upsample_maps(maps.float(), label.shape[2:]).argmax(1))):
            scores[kind].append(dice_scores(pred.numpy(), label[:, 0].numpy(), spec.num_classes))
    return {kind: {tag: round(float(d), 3) for tag, d in zip(spec.tags, np.nanmean(s, axis=0))}
            for kind, s in scores.items()}


def test_finetune_recipe_teaches_the_pixel_tag_maps_to_find_held_out_organs(tmp_path):
    """`mosmos finetune` with the shipped maps recipe (experiments.recipes.map_recipe_config: 8^3 tokens per window,
    no flips) on 4 phantoms: on 2 held-out phantoms the maps alone outline every organ, and so does the network
    that reads them; the same run without the PTA loss (lambda 0, the control) does neither."""
    from mosmos.experiments.recipes import MAP_ROI, MAP_SPACING, map_recipe_config

    data = write_decathlon_dataset(tmp_path / "data", 4, 2, seed=0, shape=MAP_ROI, spacing=MAP_SPACING,
                                   organs=MAP_ORGANS).parent
    dices = {}
    for lambda_pta in (0.8, 0.0):
        cfg = map_recipe_config(data, tmp_path / f"lambda{lambda_pta}", MAP_STEPS)
        cfg.lambda_pta = lambda_pta
        assert main(recipe_cli_args(cfg)) == 0
        dices[lambda_pta] = held_out_dices(Path(cfg.out) / "model.safetensors", data)
        print(f"lambda {lambda_pta}: held-out Dice {dices[lambda_pta]}")
    # Measured (spleen / right kidney / left kidney / liver / stomach): maps 0.62 / 0.77 / 0.61 / 0.87 / 0.69, network
    # 0.91 / 0.89 / 0.86 / 0.94 / 0.78; lambda 0 (the paper's decoder, its maps untrained): maps 0.00 / 0.08 / 0.00 /
    # 0.19 / 0.00, network 0.81 / 0.83 / 0.00 / 0.94 / 0.75. The bar, 0.6 for every organ's map, is the
    # assertion; its margin is thin (0.01), and on seed 2's held-out pair no recipe measured reaches it (README).
    maps, network = dices[0.8]["maps"], dices[0.8]["network"]
    assert min(maps.values()) >= 0.6 and np.mean(list(maps.values())) >= 0.65
    assert min(network.values()) >= 0.7 and np.mean(list(network.values())) >= 0.8
    assert np.mean(list(dices[0.0]["maps"].values())) < np.mean(list(maps.values())) - 0.3
    assert np.mean(list(dices[0.0]["network"].values())) < np.mean(list(network.values())) - 0.2
