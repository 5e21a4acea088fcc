"""The whole MOSMOS story on generated data, on a laptop CPU, with no downloads:

1. a ROCO-layout folder of phantom slices whose reports name the organs they show,
2. report-supervised pre-training of a tiny MOSMOS model on it,
3. a labelled 3D phantom dataset (Decathlon layout), fine-tuned with MOSMOS-UNETR from the
   pre-trained model and, on the same budget, from random weights,
4. a held-out phantom segmented from typed organ names: label map and attention maps (NIfTI; per
   organ the probability that it wins at the voxel), a figure, a Dice table for both initialisations
   (the network's and the pixel–tag maps' own) and a summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from .recipes import MAP_ROI, MAP_SPACING, map_recipe_config
from ..options import CPU

DEMO_TAGS = ["liver", "spleen", "right kidney", "left kidney", "stomach", "aorta"]
HELD_OUT_SEED = 10_000
# The held-out phantom at a finer grid than training's, with the same field of view (the body's size in mm).
HELD_OUT_SHAPE, HELD_OUT_SPACING = (96, 96, 96), tuple(m * r / 96 for m, r in zip(MAP_SPACING, MAP_ROI))


@dataclass(frozen=True)
class DemoBudget:
    roco_pairs: int
    pretrain_epochs: int
    train_volumes: int
    val_volumes: int
    finetune_steps: int

    @classmethod
    def of(cls, quick: bool) -> "DemoBudget":
        if quick:
            return cls(roco_pairs=160, pretrain_epochs=2, train_volumes=2, val_volumes=1, finetune_steps=10)
        return cls(roco_pairs=480, pretrain_epochs=5, train_volumes=6, val_volumes=2, finetune_steps=400)


class Stages:
    """Prints one line per stage with its time, so a newcomer sees where the minutes go."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, what: str):
        self.n += 1
        print(f"[{self.n}/{self.total}] {what} ...", flush=True)
        return _Timer(self)


class _Timer:
    def __init__(self, stages: Stages):
        self.stages = stages

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, exc_type, *rest):
        if exc_type is None:
            print(f"      done in {time.perf_counter() - self.t:.0f} s", flush=True)


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, progress: bool | None = None) -> dict:
    from ..data.phantoms import make_phantom, write_decathlon_dataset
    from ..evaluation.metrics import binary_dice, evaluate_case, spacing_from_affine
    from ..inference.io import write_volume
    from ..inference.segmenter import QUANTUM, Segmenter
    from ..train.finetune import finetune
    from .study import pretrain_on_phantom_reports

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").exists():
        raise MosmosError(f"{out}: folder exists and is not an earlier demo output; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    budget = DemoBudget.of(quick)
    stage = Stages(4)
    t_start = time.perf_counter()

    with stage(f"generating {budget.roco_pairs} phantom radiology images with reports (ROCO layout) and "
               "pre-training a tiny MOSMOS model on them (L_irc + L_mlr)"):
        pretrained = pretrain_on_phantom_reports(out, budget.roco_pairs, budget.pretrain_epochs, seed, progress,
                                                 log_every=5)
    with stage(f"generating a labelled 3D phantom dataset ({budget.train_volumes} train, "
               f"{budget.val_volumes} validation volumes)"):
        data = write_decathlon_dataset(out / "dataset", budget.train_volumes, budget.val_volumes,
                                       seed=seed + 1, shape=MAP_ROI, spacing=MAP_SPACING).parent
    models = {}
    with stage(f"fine-tuning MOSMOS-UNETR for {budget.finetune_steps} steps from the pre-trained model, "
               "then from random weights"):
        for init in ("mosmos", "random"):
            cfg = map_recipe_config(data, out / f"finetune-{init}", budget.finetune_steps, seed,
                                    pretrained=str(pretrained) if init == "mosmos" else None)
            models[init] = finetune(cfg, events=str(out / f"finetune-{init}" / "events.jsonl"), progress=progress)
    with stage(f"segmenting a held-out phantom from typed organ names: {', '.join(DEMO_TAGS)}"):
        held = make_phantom(HELD_OUT_SEED + seed, HELD_OUT_SHAPE, HELD_OUT_SPACING)
        write_volume(out / "held_out_ct.nii.gz", held.image, held.affine)
        write_volume(out / "held_out_reference.nii.gz", held.label, held.affine)
        spacing = spacing_from_affine(held.affine)
        results, dice, map_dice = {}, {}, {}
        for init, model in models.items():
            res = Segmenter(model, device=CPU).segment(held.image, held.affine, tags=DEMO_TAGS, map_labels=True)
            results[init] = res
            labels = {o["label"]: o["name"] for o in res.organs}
            per_organ = evaluate_case(res.labelmap, held.label, labels, spacing)
            dice[init] = {name: round(m["dice"], 4) for name, m in per_organ.items()}
            map_dice[init] = {name: round(binary_dice(res.map_labelmap == value, held.label == value), 4)
                              for value, name in labels.items()}
        best = results["mosmos"]
        write_volume(out / "segmentation.nii.gz", best.labelmap, held.affine)
        attention_dir = out / "attention"
        attention_dir.mkdir(exist_ok=True)
        attention = {}
        for tag in DEMO_TAGS:
            attention[tag] = best.attention[tag]
            write_volume(attention_dir / f"{tag.replace(' ', '_')}.nii.gz", best.attention.quantized(tag),
                         held.affine, scale=QUANTUM)
        figure = out / "figure.png"
        draw_figure(figure, held.image, held.label, best.labelmap, attention, best.organs)

    mean = {init: round(float(np.mean(list(d.values()))), 4) for init, d in dice.items()}
    map_mean = {init: round(float(np.nanmean(list(d.values()))), 4) for init, d in map_dice.items()}
    summary = {"seed": seed, "quick": quick, "budget": budget.__dict__, "tags": DEMO_TAGS, "dice": dice,
               "mean_dice": mean, "map_dice": map_dice, "mean_map_dice": map_mean, "organ_volumes_ml": {o["name"]: round(o["volume_ml"], 1) for o in best.organs},
               "seconds": round(time.perf_counter() - t_start, 1), "figure": str(figure),
               "models": {k: str(v) for k, v in models.items()}, "pretrained": str(pretrained)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = dice_table(dice, map_dice)
    (out / "dice.md").write_text(table)
    print()
    print(table)
    print(f"figure: {figure}\nsummary: {out / 'summary.json'}\ntotal time: {summary['seconds']:.0f} s")
    return summary


def dice_table(dice: dict[str, dict[str, float]], map_dice: dict[str, dict[str, float]]) -> str:
    """Dice per organ of each initialisation: the network's, then its pixel–tag maps' own (argmax of
    the up-sampled maps over the model's classes, background included)."""
    columns = [(f"{i} init", dice[i]) for i in dice] + [(f"{i} init, maps", map_dice[i]) for i in map_dice]
    organs = list(next(iter(dice.values())))
    lines = ["| organ | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for organ in organs:
        lines.append(f"| {organ} | " + " | ".join(f"{col[organ]:.3f}" for _, col in columns) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{np.nanmean(list(col.values())):.3f}**" for _, col in columns)
                 + " |")
    return "\n".join(lines) + "\n"


def draw_figure(path: Path, image, reference, labelmap, attention: dict, organs: list[dict]) -> None:
    """One axial slice: CT, reference, MOSMOS segmentation, and one pixel–tag attention map per tag
    (as in the paper's Fig. 1 and Fig. 7), each shown as P(organ wins) on a fixed 0..1 scale with a
    colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ..tags import attention_title, color_for

    z = int(np.argmax((reference > 0).sum(axis=(0, 1))))

    def axial(a):  # patient's right on the left of the picture, anterior at the top (radiological)
        return np.flipud(np.asarray(a)[:, :, z].T)

    ct = np.clip((axial(image) + 175) / 425, 0, 1)
    values = sorted({int(v) for v in np.unique(reference)} | {o["label"] for o in organs})
    palette = np.zeros((max(values) + 1, 4))
    for o in organs:
        palette[o["label"]] = [*np.array(o["color"]) / 255, 0.6]
    from ..data.phantoms import BTCV_LABELS

    for v in values:
        if v and not palette[v, 3]:
            palette[v] = [*np.array(color_for(BTCV_LABELS.get(v, str(v)))) / 255, 0.6]
    cmap = ListedColormap(palette)
    n = 3 + len(attention)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    panels = [("CT", None), ("reference", reference), ("MOSMOS segmentation", labelmap)]
    for ax, (title, lab) in zip(axes, panels):
        ax.imshow(ct, cmap="gray")
        if lab is not None:
            ax.imshow(axial(lab), cmap=cmap, vmin=0, vmax=len(palette) - 1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
    shown, labelled = None, {o["name"] for o in organs}
    for ax, (tag, amap) in zip(axes[3:], attention.items()):
        ax.imshow(ct, cmap="gray")
        # below 5 % left transparent, as the Slicer overlay does (mosmos.mrml.attention)
        shown = ax.imshow(np.ma.masked_less(axial(amap), 0.05), cmap="inferno", alpha=0.6, vmin=0, vmax=1)
        ax.set_title(attention_title(tag, tag in labelled), fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle("pixel–tag attention: probability that the organ wins at the pixel (softmax of the maps / "
                 "epsilon over the labelled classes, as L_pta trains them); below 0.05 not drawn",
                 fontsize=7, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 0.95, 1))
    if shown is not None:
        bar = fig.colorbar(shown, cax=fig.add_axes((0.955, 0.2, 0.006, 0.65)))
        bar.set_label("P(organ wins)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)
