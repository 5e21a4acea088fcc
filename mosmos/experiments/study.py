"""The pre-training study (MOSMOS §4, the claim of its Table 2 and Fig. 5 at phantom scale): does
report-supervised pre-training help segmentation, and most when labels are few?

One MOSMOS model is pre-trained once on phantom slices with reports (ROCO layout). Then, for each
label budget (number of labelled training volumes) and each seed, MOSMOS-UNETR is fine-tuned from the
pre-trained model and from random weights with the same recipe and the same number of steps, on the
same seeded subset of training volumes, and both are evaluated on the same held-out phantoms. Nothing
is selected on the held-out set: each run keeps its last model.

The 2D report images are axial (and some coronal) slices of subjects drawn by the same generator as
the 3D phantoms, so what pre-training learns about these organs can transfer to them.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.phantoms import REPORT_STYLES
from ..errors import MosmosError
from ..files.atomic import atomic_write_bytes

INITS = ("mosmos", "random")
STUDY_TAGS = ("liver", "spleen", "right kidney", "left kidney", "stomach")


@dataclass(frozen=True)
class StudyPlan:
    budgets: tuple[int, ...]  # labelled training volumes per run; the largest is all of them
    seeds: int
    held_out: int  # phantoms every run is scored on
    steps: int  # fine-tuning steps, equal for both initialisations
    roco_pairs: int
    pretrain_epochs: int
    reports: str = "visible"  # what the phantom reports name (data.phantoms.REPORT_STYLES)

    @classmethod
    def of(cls, quick: bool, **changes) -> "StudyPlan":
        """The default (or ``quick``) plan with the ``changes`` that are not None."""
        plan = (cls(budgets=(1,), seeds=1, held_out=1, steps=2, roco_pairs=64, pretrain_epochs=1) if quick else
                cls(budgets=(1, 2, 4), seeds=5, held_out=4, steps=200, roco_pairs=1600, pretrain_epochs=10))
        changes = {k: tuple(v) if k == "budgets" else str(v) if k == "reports" else int(v)
                   for k, v in changes.items() if v is not None}
        plan = cls(**{**asdict(plan), **changes})
        if min(plan.budgets) < 1 or min(plan.seeds, plan.steps, plan.roco_pairs, plan.pretrain_epochs) < 1:
            raise MosmosError(f"study: budgets, seeds, steps, report pairs and pre-training epochs must be at "
                              f"least 1 (got {asdict(plan)})")
        if plan.reports not in REPORT_STYLES:
            raise MosmosError(f"study: --reports {plan.reports}: use one of {', '.join(REPORT_STYLES)}")
        return plan


def run_study(out: str | Path, quick: bool = False, progress: bool | None = None, jobs: int = 1, **changes) -> dict:
    """Run the study into ``out`` (``changes``: StudyPlan fields to change; ``jobs``: fine-tuning runs at
    once, one process each; the results do not depend on it): ``runs.csv`` (one row per run),
    ``study.md`` (mean ± sd Dice per budget and initialisation, wins, Wilcoxon p), ``study.png`` and
    ``study.json``; returns the summary."""
    from ..data.phantoms import write_decathlon_dataset

    plan = StudyPlan.of(quick, **changes)
    if jobs < 1:
        raise MosmosError(f"study: --jobs must be at least 1 (got {jobs})")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "study.json").exists():
        raise MosmosError(f"{out}: folder exists and is not an earlier study output; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_train = max(plan.budgets)
    print(f"study: {len(plan.budgets)} label budgets x {plan.seeds} seeds x {len(INITS)} inits, "
          f"{plan.steps} fine-tuning steps each", flush=True)
    pretrained = pretrain_on_phantom_reports(out, plan.roco_pairs, plan.pretrain_epochs, seed=0, progress=progress,
                                             reports=plan.reports)
    print(f"study: pre-trained once in {time.perf_counter() - t0:.0f} s", flush=True)
    data = write_decathlon_dataset(out / "dataset", n_train, plan.held_out, seed=1, organs=STUDY_TAGS,
                                   **_phantom_grid()).parent

    runs = [dict(data=data, run_dir=out / "runs" / f"b{budget}-s{seed}-{init}", steps=plan.steps, seed=seed,
                 pretrained=str(pretrained) if init == "mosmos" else None, label_ratio=budget / n_train,
                 row={"budget": budget, "seed": seed, "init": init})
            for budget in plan.budgets for seed in range(plan.seeds) for init in INITS]
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        rows.sort(key=lambda r: (r["budget"], r["seed"], INITS.index(r["init"])))
        print(f"study: budget {row['budget']}, seed {row['seed']}, {row['init']} init: held-out mean Dice "
              f"{row['dice']:.3f}", flush=True)
        _write_runs_csv(out / "runs.csv", rows)  # after every run: a stopped study keeps what it measured

    if jobs <= 1:
        for run in runs:
            record(study_run(progress=progress, **run))
    else:  # independent runs, one process each (each as many threads as OMP_NUM_THREADS allows)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in as_completed([pool.submit(study_run, progress=False, **run) for run in runs]):
                record(done.result())

    summary = summarize(rows, plan)
    summary["pretrained_maps"] = pretrained_map_auc(pretrained, pictures=20 if quick else 200)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_bytes(out / "study.md", study_table(summary).encode())
    draw_study(out / "study.png", summary)
    atomic_write_bytes(out / "study.json", json.dumps(summary, indent=2).encode())
    print()
    print(study_table(summary))
    print(f"total time: {summary['seconds']:.0f} s; table {out / 'study.md'}, plot {out / 'study.png'}")
    return summary


def study_run(data: Path, run_dir: Path, steps: int, seed: int, pretrained: str | None, label_ratio: float,
              row: dict, progress: bool | None) -> dict:
    """Fine-tune one run of the study and score it on the held-out phantoms: ``row`` with its Dice and time."""
    from ..train.finetune import finetune
    from .recipes import map_recipe_config

    t = time.perf_counter()
    cfg = map_recipe_config(data, run_dir, steps, seed=seed, pretrained=pretrained, label_ratio=label_ratio)
    model = finetune(cfg, events=str(run_dir / "events.jsonl"), progress=progress)
    return {**row, "dice": held_out_dice(model, data), "seconds": round(time.perf_counter() - t, 1)}


def pretrain_on_phantom_reports(out: Path, pairs: int, epochs: int, seed: int = 0, progress: bool | None = None,
                                log_every: int = 10, reports: str = "visible") -> Path:
    """Write ``pairs`` phantom slices with reports (naming what ``reports`` says: data.phantoms.phantom_slices)
    to ``out/roco`` (ROCO layout) and pre-train the maps' backbone on them into ``out/pretrain``; returns the
    pre-trained model file (as the study and the demo do).

    The pictures show the body at the scale one fine-tuning window does (the backbone's image size is
    the window's in-plane size, so an organ covers as many tokens in both and the positional grids agree)."""
    from ..data.phantoms import write_roco_folder
    from ..train.config import PretrainConfig
    from ..train.pretrain import pretrain
    from .recipes import MAP_BACKBONE

    roco = write_roco_folder(out / "roco", pairs, seed=seed, image_size=report_image_size(), reports=reports)
    return pretrain(PretrainConfig(
        roco=str(roco), out=str(out / "pretrain"), backbone=MAP_BACKBONE, epochs=epochs, batch_size=32, lr=1e-3,
        warmup_steps=10, workers=0, seed=seed, log_every=log_every),
        events=str(out / "pretrain" / "events.jsonl"), progress=progress)


def report_image_size() -> int:
    """Side of the phantom report pictures: the maps' backbone's image size (checked against the window)."""
    import open_clip

    from ..models.backbones import canonical_backbone
    from .recipes import MAP_BACKBONE, MAP_ROI

    size = open_clip.get_model_config(canonical_backbone(MAP_BACKBONE))["vision_cfg"]["image_size"]
    if MAP_ROI[:2] != [size, size]:
        raise MosmosError(f"{MAP_BACKBONE}: image size {size} is not the fine-tuning window's in-plane size "
                          f"{MAP_ROI[:2]}; report pictures and windows would show organs at different scales")
    return size


def _phantom_grid() -> dict:
    from .recipes import MAP_ROI, MAP_SPACING

    return {"shape": tuple(MAP_ROI), "spacing": tuple(MAP_SPACING)}


def held_out_dice(model: Path, data: Path) -> float:
    """Mean over held-out cases of the case's mean organ Dice (the network's segmentation)."""
    import contextlib
    import io

    from ..evaluation.evaluate import evaluate
    from ..evaluation.metrics import case_mean_dice

    with contextlib.redirect_stderr(io.StringIO()):  # evaluate's per-case lines
        results = evaluate(str(model), str(data), "validation", device="cpu")
    return float(np.nanmean(list(case_mean_dice(results).values())))


def pretrained_map_auc(model: Path, pictures: int = 200, seed: int = 777) -> dict:
    """Do the pre-trained model's own 2D pixel–tag maps find organs? On held-out report pictures, per
    organ the AUC of its tag's map over tokens inside the organ (at least half covered) against tokens
    outside it (0.5 = chance), and the same after subtracting each token's mean over the tags (what tells
    organs apart: a softmax over tags, as L_pta reads maps, sees only that); ``random``: the same for a
    randomly initialised model of that architecture (organs are brighter than air: not 0.5)."""
    import torch

    from ..models.pretrain import MosmosPretrainModel

    trained = MosmosPretrainModel.from_file(model)
    torch.manual_seed(seed)
    return {"pictures": pictures, **_map_auc(trained, pictures, seed),
            "random": _map_auc(MosmosPretrainModel.from_config(trained.config), pictures, seed)}


def _map_auc(net, pictures: int, seed: int) -> dict:
    import torch
    from PIL import Image

    from ..data.phantoms import BTCV_LABELS, phantom_slices
    from ..train.pretrain import image_transforms

    net.eval()
    config = net.config
    items = phantom_slices(pictures, seed=seed, image_size=config["image_size"])
    transform = image_transforms(config["image_size"], config["mean"], config["std"], train=False)
    with torch.no_grad():
        out = net(torch.stack([transform(Image.fromarray(s.image).convert("RGB")) for s in items]),
                  net.tokenize([""] * len(items)))
    maps, (h, w) = out["pixel_tag_maps"].float().numpy(), out["grid"]
    value = {name: v for v, name in BTCV_LABELS.items()}
    auc, centred = {}, []

    def roc_auc(inside, outside):
        return float((inside[:, None] > outside[None]).mean() + 0.5 * (inside[:, None] == outside[None]).mean())

    for b, item in enumerate(items):
        p = item.label.shape[0] // h
        for organ in (o for o in item.organs if o in net.tags):
            cover = (item.label == value[organ]).reshape(h, p, w, p).mean(axis=(1, 3)).ravel()
            inside, outside = cover >= 0.5, cover == 0
            if inside.any() and outside.any():
                score = maps[b, net.tags.index(organ)]
                auc.setdefault(organ, []).append(roc_auc(score[inside], score[outside]))
                score = score - maps[b].mean(axis=0)
                centred.append(roc_auc(score[inside], score[outside]))
    per_organ = {organ: round(float(np.mean(v)), 3) for organ, v in auc.items()}
    return {"auc": per_organ, "mean_auc": round(float(np.mean(list(per_organ.values()))), 3),
            "tag_centred_auc": round(float(np.mean(centred)), 3)}


def summarize(rows: list[dict], plan: StudyPlan) -> dict:
    """Mean ± sd per budget and init, the seeds where MOSMOS init wins, and the paired Wilcoxon p."""
    from ..evaluation.metrics import wilcoxon_p

    table = []
    for budget in plan.budgets:
        by_init = {init: {r["seed"]: r["dice"] for r in rows if r["budget"] == budget and r["init"] == init}
                   for init in INITS}
        entry = {"budget": budget}
        for init, values in by_init.items():
            v = np.array(list(values.values()))
            entry[init] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        # Paired by seed (same training subset and crops); the "case" of wilcoxon_p is the seed.
        as_results = {init: {f"seed{s}": {"mean": {"dice": d}} for s, d in values.items()}
                      for init, values in by_init.items()}
        seeds = sorted(by_init["mosmos"])
        entry["mosmos_wins"] = sum(by_init["mosmos"][s] > by_init["random"][s] for s in seeds)
        entry["pairs"] = len(seeds)
        entry["wilcoxon_p"] = wilcoxon_p(as_results["mosmos"], as_results["random"])[0] if len(seeds) > 1 else None
        table.append(entry)
    return {"plan": asdict(plan), "tags": list(STUDY_TAGS), "table": table}


def study_table(summary: dict) -> str:
    lines = ["| labelled volumes | MOSMOS init Dice | random init Dice | MOSMOS ahead (seeds) | Wilcoxon p |",
             "|---|---|---|---|---|"]
    for e in summary["table"]:
        p = "n/a" if e["wilcoxon_p"] is None else f"{e['wilcoxon_p']:.3f}"
        lines.append(f"| {e['budget']} | {e['mosmos']['mean']:.3f} ± {e['mosmos']['sd']:.3f} | "
                     f"{e['random']['mean']:.3f} ± {e['random']['sd']:.3f} | {e['mosmos_wins']}/{e['pairs']} | {p} |")
    plan = summary.get("plan")
    if plan:
        named = "every visible organ" if plan.get("reports", "visible") == "visible" else "only organs with a finding"
        lines += ["", f"Pre-trained {plan['pretrain_epochs']} epochs on {plan['roco_pairs']} phantom pictures whose "
                  f"reports name {named}; {plan['steps']} fine-tuning steps per run."]
    if "pretrained_maps" in summary:
        m = summary["pretrained_maps"]
        lines += ["", f"Pre-trained model's own 2D maps on {m['pictures']} held-out report pictures: AUC of an organ's "
                  f"tag map, organ tokens against the rest, {m['mean_auc']:.3f} (mean over organs; randomly "
                  f"initialised model {m['random']['mean_auc']:.3f}); after subtracting each token's mean over "
                  f"tags {m['tag_centred_auc']:.3f} (random {m['random']['tag_centred_auc']:.3f}; 0.5 = chance)."]
    return "\n".join(lines) + "\n"


def _write_runs_csv(path: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["budget", "seed", "init", "dice", "seconds"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "dice": f"{r['dice']:.4f}"})
    atomic_write_bytes(path, text.getvalue().encode())


def draw_study(path: Path, summary: dict) -> None:
    """Held-out Dice against the label budget, one line per initialisation (mean ± sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    budgets = [e["budget"] for e in summary["table"]]
    for init, colour in zip(INITS, ("tab:red", "tab:gray")):
        mean = [e[init]["mean"] for e in summary["table"]]
        sd = [e[init]["sd"] for e in summary["table"]]
        ax.errorbar(budgets, mean, yerr=sd, marker="o", capsize=3, color=colour, label=f"{init} init")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("labelled training volumes")
    ax.set_ylabel("held-out mean Dice")
    ax.set_title(f"{summary['plan']['seeds']} seeds, {summary['plan']['steps']} steps", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
