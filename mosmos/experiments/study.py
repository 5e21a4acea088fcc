"""The pre-training study (the claim of the paper's Table 2 and Fig. 6, at phantom scale): does
report-supervised pre-training help segmentation, and most when labels are few?

One MOSMOS model is pre-trained once on phantom slices with reports (ROCO layout). Then, for each
label budget (number of labelled training volumes, or a share of them: ``ratios``) and each seed,
MOSMOS-UNETR (``arch="unetr"``, 3D) or MOSMOS-U-Net (``arch="unet2d"``, 2D slices, no inflation) is
fine-tuned from the pre-trained model and from random weights with the same recipe and the same number of
steps, on the same seeded subset of training volumes, and both are evaluated on the same held-out phantoms.
Nothing is selected on the held-out set: each run keeps its last model.

The 2D report images are axial (and some coronal) slices of subjects drawn by the same generator as
the 3D phantoms, so what pre-training learns about these organs can transfer to them.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..data.phantoms import REPORT_STYLES
from ..errors import MosmosError
from ..files.atomic import atomic_write_bytes
from .recipes import STUDY_RECIPES
from ..options import CPU, PAPER_BACKBONES, UNET2D, UNETR

INITS = ("mosmos", "random")
STUDY_TAGS = ("liver", "spleen", "right kidney", "left kidney", "stomach")
TRAIN_VOLUMES = 4  # labelled phantom training volumes of a plan given as label ratios
REAL_RATIOS = (0.25, 0.5, 0.75, 1.0)  # a real dataset's default label ratios: the paper's Fig. 6
REAL_BACKBONES = PAPER_BACKBONES  # the paper's encoders
# What the paper reports for each architecture (mean Dice in %, BTCV; Tian et al., arXiv:2409.02418), to be read
# beside the phantom table: Table 2 (random init -> MOSMOS init, all labels) and the label-ratio result of Fig. 6.
PAPER = {
    UNETR: "Table 2, UNETR: 78.53 from scratch -> 80.36 with MOSMOS pre-training (+1.83). Table 4, row 3: "
             "MOSMOS pre-training without CLIP initialisation 78.77 (+0.24 over scratch).",
    UNET2D: "Table 2, U-Net (ResNet-50): 74.86 from scratch -> 80.10 with MOSMOS pre-training (+5.24), the "
              "paper's largest gain. Fig. 6: with 25 % of the labels MOSMOS is about 7 % ahead of scratch.",
}


@dataclass(frozen=True)
class StudyPlan:
    budgets: tuple[int, ...]  # labelled training volumes per run; the largest is all of them
    seeds: int
    held_out: int  # phantoms every run is scored on
    steps: int  # fine-tuning steps, equal for both initialisations
    roco_pairs: int
    pretrain_epochs: int
    reports: str = "visible"  # what the phantom reports name (data.phantoms.REPORT_STYLES)
    arch: str = UNETR  # fine-tuning network: "unetr" (3D) or "unet2d" (2D slices)
    ratios: tuple[float, ...] | None = None  # label budgets as shares of the training set, instead of budgets
    roco: str | None = None  # a ROCO folder to pre-train on instead of phantom reports (with data)
    data: str | None = None  # a Decathlon-layout dataset to fine-tune on, scored on its own validation split
    weights: str | None = None  # CLIP weights pre-training (and the "clip" arm) starts from; None: random
    backbone: str | None = None  # None: the recipe's on phantoms, REAL_BACKBONES on a real dataset
    device: str = "auto"
    clip_arm: bool = False  # a third arm: fine-tuned from the CLIP weights without report pre-training
    ablate: str | None = None  # the part of pre-training left out (PretrainConfig.ablate)
    roi_size: tuple[int, ...] | None = None  # the fine-tuning window on a real dataset (None: fine-tuning's own)
    spacing: tuple[float, ...] | None = None
    workers: int = 4  # data-loading processes of each run on real folders
    learn_prompt: bool = False  # fine-tuning trains the tags' prompt context too (FinetuneConfig.learn_prompt)

    @classmethod
    def of(cls, quick: bool, **changes) -> "StudyPlan":
        """The default (or ``quick``) plan with the ``changes`` that are not None."""
        plan = (cls(budgets=(1,), seeds=1, held_out=1, steps=2, roco_pairs=64, pretrain_epochs=1) if quick else
                cls(budgets=(1, 2, 4), seeds=5, held_out=4, steps=200, roco_pairs=1600, pretrain_epochs=10))
        kinds = {"budgets": lambda v: tuple(int(b) for b in v), "ratios": lambda v: tuple(float(r) for r in v),
                 "reports": str, "arch": str, "roco": _absolute, "data": _absolute, "backbone": str, "device": str,
                 "weights": lambda v: _absolute(v) if Path(v).is_file() else str(v), "clip_arm": bool,
                 "learn_prompt": bool, "ablate": str, "roi_size": lambda v: tuple(int(x) for x in v),
                 "spacing": lambda v: tuple(float(x) for x in v)}
        changes = {k: kinds.get(k, int)(v) for k, v in changes.items() if v is not None and v is not False}
        if "ratios" in changes and "budgets" in changes:
            raise MosmosError("study: give label budgets as --budgets or as --ratios, not both")
        if ("roco" in changes) != ("data" in changes):
            raise MosmosError("study: --roco and --data go together: pre-training on one folder, fine-tuning on "
                              "the other")
        if "data" in changes:
            if "budgets" in changes:
                raise MosmosError("study: on a real dataset give label budgets as --ratios of its training set")
            changes.setdefault("ratios", (1.0,) if quick else REAL_RATIOS)
        elif "roi_size" in changes or "spacing" in changes:
            raise MosmosError("study: --roi-size and --spacing set the grid of a real dataset (--data); the "
                              "phantom study keeps its recipe's")
        if changes.get("clip_arm") and "weights" not in changes:
            raise MosmosError("study: --init clip needs --weights: the CLIP weights that arm starts from")
        if changes.get("ablate") not in (None, "irc", "mlr", "prompt"):
            raise MosmosError(f"study: --ablate {changes['ablate']}: use one of irc, mlr, prompt")
        if "ratios" in changes:
            changes["budgets"] = (TRAIN_VOLUMES,)
        if not quick and "steps" not in changes:
            changes["steps"] = STUDY_RECIPES.get(changes.get("arch", plan.arch), STUDY_RECIPES[plan.arch]).steps
        plan = cls(**{**asdict(plan), **changes})
        if min(plan.budgets) < 1 or min(plan.seeds, plan.steps, plan.roco_pairs, plan.pretrain_epochs) < 1:
            raise MosmosError(f"study: budgets, seeds, steps, report pairs and pre-training epochs must be at "
                              f"least 1 (got {asdict(plan)})")
        if plan.workers < 0:
            raise MosmosError(f"study: --workers {plan.workers}: must be at least 0")
        if plan.ratios is not None and not all(0 < r <= 1 for r in plan.ratios):
            raise MosmosError(f"study: --ratios {' '.join(map(str, plan.ratios))}: each must be in (0, 1]")
        if plan.reports not in REPORT_STYLES:
            raise MosmosError(f"study: --reports {plan.reports}: use one of {', '.join(REPORT_STYLES)}")
        if plan.arch not in STUDY_RECIPES:
            raise MosmosError(f"study: --arch {plan.arch}: use one of {', '.join(STUDY_RECIPES)}")
        return plan

    def inits(self) -> tuple[str, ...]:
        """The initialisations each budget and seed is fine-tuned from."""
        return INITS + (("clip",) if self.clip_arm else ())

    def pretrain_backbone(self) -> str:
        if self.backbone:
            return self.backbone
        return REAL_BACKBONES[self.arch] if self.data else STUDY_RECIPES[self.arch].backbone

    def label_shares(self) -> list[tuple[float, float]]:
        """(budget as the table shows it, label ratio of the training set) per budget of the plan."""
        if self.ratios is not None:
            return [(r, r) for r in self.ratios]
        return [(b, b / max(self.budgets)) for b in self.budgets]


def _absolute(path) -> str:
    return str(Path(path).resolve())


def run_study(out: str | Path, quick: bool = False, progress: bool | None = None, jobs: int = 1, **changes) -> dict:
    """Run the study into ``out`` (``changes``: StudyPlan fields to change; ``jobs``: fine-tuning runs at
    once, one process each; the results do not depend on it): ``runs.csv`` (one row per run),
    ``study.md`` (mean ± sd Dice per budget and initialisation, wins, Wilcoxon p), ``study.png`` and
    ``study.json``; returns the summary."""
    from ..data.phantoms import write_decathlon_dataset

    plan = StudyPlan.of(quick, **changes)
    recipe = STUDY_RECIPES[plan.arch]
    if jobs < 1:
        raise MosmosError(f"study: --jobs must be at least 1 (got {jobs})")
    if plan.data:
        _check_real_folders(plan)
    out = Path(out)
    started = _started_study(out, plan)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_train = max(plan.budgets)
    shares = plan.label_shares()
    print(f"study: {plan.arch}, {len(shares)} label budgets x {plan.seeds} seeds x {len(plan.inits())} inits, "
          f"{plan.steps} fine-tuning steps each", flush=True)
    pretrained = started.get("pretrained")
    if pretrained and Path(pretrained).is_file():
        print(f"study: resuming; pre-trained model {pretrained}", flush=True)
    else:
        _write_started(out, plan, None)
        pretrained = (pretrain_on_roco(out, plan, progress) if plan.roco else
                      pretrain_on_phantom_reports(out, plan.roco_pairs, plan.pretrain_epochs, seed=0,
                                                  progress=progress, reports=plan.reports, arch=plan.arch,
                                                  weights=plan.weights, ablate=plan.ablate))
        _write_started(out, plan, pretrained)
        print(f"study: pre-trained once in {time.perf_counter() - t0:.0f} s", flush=True)
    data = Path(plan.data) if plan.data else write_decathlon_dataset(
        out / "dataset", n_train, plan.held_out, seed=1, organs=STUDY_TAGS, shape=recipe.shape,
        spacing=recipe.spacing).parent

    runs = [dict(cfg=finetune_config(plan, data, out / "runs" / f"b{budget}-s{seed}-{init}", seed, init,
                                     pretrained, ratio), row={"budget": budget, "seed": seed, "init": init})
            for budget, ratio in shares for seed in range(plan.seeds) for init in plan.inits()]
    rows = _read_runs_csv(out / "runs.csv", plan) if started else []
    done = {(r["budget"], r["seed"], r["init"]) for r in rows}
    runs = [run for run in runs if tuple(run["row"].values()) not in done]
    if done:
        print(f"study: {len(done)} runs already in runs.csv, {len(runs)} to go", flush=True)
    for run in runs:  # a run a kill interrupted starts again from nothing
        shutil.rmtree(run["cfg"].out, ignore_errors=True)

    def record(row: dict) -> None:
        rows.append(row)
        rows.sort(key=lambda r: (r["budget"], r["seed"], plan.inits().index(r["init"])))
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
    summary["held_out"] = held_out_cases(data)
    if recipe.map_diagnosis:
        summary["pretrained_maps"] = pretrained_map_auc(pretrained, pictures=20 if quick else 200)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_bytes(out / "study.md", study_table(summary).encode())
    draw_study(out / "study.png", summary)
    atomic_write_bytes(out / "study.json", json.dumps(summary, indent=2).encode())
    print()
    print(study_table(summary))
    print(f"total time: {summary['seconds']:.0f} s; table {out / 'study.md'}, plot {out / 'study.png'}")
    return summary


def finetune_config(plan: StudyPlan, data: Path, run_dir: Path, seed: int, init: str, pretrained: Path,
                    label_ratio: float):
    """The fine-tuning of one run: the architecture's phantom recipe, or on a real dataset fine-tuning's own
    defaults (the paper's) for ``plan.steps`` steps; from the pre-trained model, the CLIP weights or random."""
    from ..train.config import FinetuneConfig

    start = {"mosmos": str(pretrained), "clip": plan.weights, "random": None}[init]
    if plan.data is None:
        cfg = STUDY_RECIPES[plan.arch].config(data, run_dir, plan.steps, seed=seed, label_ratio=label_ratio)
        return replace(cfg, init=init, pretrained=start, backbone=plan.pretrain_backbone(),
                                   device=plan.device, learn_prompt=plan.learn_prompt)
    return FinetuneConfig(data=str(data), out=str(run_dir), arch=plan.arch, backbone=plan.pretrain_backbone(),
                          init=init, pretrained=start, epochs=10**6, max_steps=plan.steps, label_ratio=label_ratio,
                          seed=seed, device=plan.device, val_every=10**6, checkpoint_every=10**6,
                          workers=plan.workers, learn_prompt=plan.learn_prompt,
                          roi_size=list(plan.roi_size) if plan.roi_size else None,
                          spacing=list(plan.spacing) if plan.spacing else None)


def study_run(cfg, row: dict, progress: bool | None) -> dict:
    """Fine-tune one run of the study (``cfg``) and score it on the held-out cases: ``row`` with its Dice and
    time."""
    from ..train.finetune import finetune

    t = time.perf_counter()
    model = finetune(cfg, events=str(Path(cfg.out) / "events.jsonl"), progress=progress)
    dice = held_out_dice(model, Path(cfg.data), cfg.device)
    return {**row, "dice": dice, "seconds": round(time.perf_counter() - t, 1)}


def _check_real_folders(plan: StudyPlan) -> None:
    """Fail before any work on a dataset with nothing to score on or a ROCO folder that is not there."""
    from ..data.decathlon import load_decathlon

    if not Path(plan.roco).is_dir():
        raise MosmosError(f"{plan.roco}: ROCO folder not found")
    spec = load_decathlon(plan.data)
    if not spec.validation:
        raise MosmosError(f"{spec.json_path}: no 'validation' cases; the study scores every run on them")


def held_out_cases(data: Path) -> list[str]:
    from ..data.decathlon import load_decathlon

    return [str(case["image"]) for case in load_decathlon(str(data)).validation]


def pretrain_on_roco(out: Path, plan: StudyPlan, progress: bool | None) -> Path:
    """Pre-train on the plan's ROCO folder into ``out/pretrain`` with pre-training's own defaults (the paper's),
    from the plan's CLIP weights; returns the pre-trained model file."""
    from ..train.config import PretrainConfig
    from ..train.pretrain import pretrain

    return pretrain(PretrainConfig(roco=plan.roco, out=str(out / "pretrain"), backbone=plan.pretrain_backbone(),
                                   weights=plan.weights, epochs=plan.pretrain_epochs, seed=0, device=plan.device,
                                   workers=plan.workers, ablate=plan.ablate),
                    events=str(out / "pretrain" / "events.jsonl"), progress=progress)


def pretrain_on_phantom_reports(out: Path, pairs: int, epochs: int, seed: int = 0, progress: bool | None = None,
                                log_every: int = 10, reports: str = "visible", arch: str = UNETR,
                                weights: str | None = None, ablate: str | None = None) -> Path:
    """Write ``pairs`` phantom slices with reports (naming what ``reports`` says: data.phantoms.phantom_slices)
    to ``out/roco`` (ROCO layout) and pre-train the backbone of ``arch``'s study recipe on them into
    ``out/pretrain``; returns the pre-trained model file (as the study and the demo do).

    The pictures show the body at the scale one fine-tuning window does (the backbone's image size is
    the window's in-plane size, so an organ covers as many tokens in both and the positional grids agree)."""
    from ..data.phantoms import write_roco_folder
    from ..train.config import PretrainConfig
    from ..train.pretrain import pretrain

    roco = write_roco_folder(out / "roco", pairs, seed=seed, image_size=report_image_size(arch), reports=reports)
    return pretrain(PretrainConfig(
        roco=str(roco), out=str(out / "pretrain"), backbone=STUDY_RECIPES[arch].backbone, weights=weights,
        epochs=epochs, batch_size=32, lr=1e-3, warmup_steps=10, workers=0, seed=seed, log_every=log_every,
        ablate=ablate),
        events=str(out / "pretrain" / "events.jsonl"), progress=progress)


def report_image_size(arch: str = UNETR) -> int:
    """Side of the phantom report pictures: the backbone's image size (checked against the window)."""
    import open_clip

    from ..models.backbones import canonical_backbone

    recipe = STUDY_RECIPES[arch]
    size = open_clip.get_model_config(canonical_backbone(recipe.backbone))["vision_cfg"]["image_size"]
    if recipe.window != (size, size):
        raise MosmosError(f"{recipe.backbone}: image size {size} is not the fine-tuning window's in-plane size "
                          f"{list(recipe.window)}; report pictures and windows would show organs at different scales")
    return size


def held_out_dice(model: Path, data: Path, device: str = CPU) -> float:
    """Mean over held-out cases of the case's mean organ Dice (the network's segmentation)."""
    import contextlib
    import io

    from ..evaluation.evaluate import evaluate
    from ..evaluation.metrics import case_mean_dice

    with contextlib.redirect_stderr(io.StringIO()):  # evaluate's per-case lines
        results = evaluate(str(model), str(data), "validation", device=device, compile="off")
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
    for budget, _ in plan.label_shares():
        by_init = {init: {r["seed"]: r["dice"] for r in rows if r["budget"] == budget and r["init"] == init}
                   for init in plan.inits()}
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


def study_setting(plan: dict) -> str:
    """One sentence: the network, what was pre-trained on what, and the fine-tuning steps."""
    arch = plan.get("arch", UNETR)
    network = "MOSMOS-U-Net on 2D slices" if arch == UNET2D else "MOSMOS-UNETR"
    backbone = plan.get("backbone") or (REAL_BACKBONES[arch] if plan.get("data") else STUDY_RECIPES[arch].backbone)
    start = "CLIP weights " + Path(plan["weights"]).name if plan.get("weights") else "random weights"
    if plan.get("roco"):
        source = f"the ROCO folder {plan['roco']}, fine-tuned on {plan['data']} and scored on its validation split"
    else:
        named = "every visible organ" if plan.get("reports", "visible") == "visible" else "only organs with a finding"
        source = f"{plan['roco_pairs']} phantom pictures whose reports name {named}"
    ablated = f", without {plan['ablate']}" if plan.get("ablate") else ""
    return (f"{network}, {backbone} pre-trained from {start} {plan['pretrain_epochs']} epochs on {source}{ablated}; "
            f"{plan['steps']} fine-tuning steps per run" +
            (", the tags' prompt context learnt in fine-tuning too." if plan.get("learn_prompt") else "."))


def paper_context(plan: dict) -> str:
    """What the paper reports for this arm, and whether this setting is the one it reports it for."""
    arch = plan.get("arch", UNETR)
    text = f"The paper: {PAPER[arch]}"
    if plan.get("roco") and plan.get("weights"):
        return text + " This study's setting (CLIP weights, ROCO, a real dataset) is the paper's."
    return (text + " Its gains are from CLIP-initialised encoders pre-trained on ROCO and fine-tuned on BTCV; "
            "pre-training encoders from random weights, as here, is the setting where its own ablation "
            "(Table 4, row 3) finds almost no gain.")


def budget_heading(plan: dict) -> str:
    return "label ratio" if plan.get("ratios") is not None else "labelled volumes"


def init_name(init: str, plan: dict) -> str:
    """An arm as the table names it: MOSMOS (less what the plan ablates), CLIP or random."""
    if init == "mosmos":
        return f"MOSMOS w/o {plan['ablate']}" if plan.get("ablate") else "MOSMOS"
    return {"clip": "CLIP", "random": "random"}[init]


def study_table(summary: dict) -> str:
    plan = summary.get("plan") or {}
    inits = [init for init in ("mosmos", "random", "clip") if init in summary["table"][0]]
    lines = [f"| {budget_heading(plan)} | " + " | ".join(f"{init_name(i, plan)} init Dice" for i in inits) +
             " | MOSMOS ahead of random (seeds) | Wilcoxon p |", "|---" * (len(inits) + 3) + "|"]
    for e in summary["table"]:
        p = "n/a" if e["wilcoxon_p"] is None else f"{e['wilcoxon_p']:.3f}"
        lines.append(f"| {e['budget']} | " + " | ".join(f"{e[i]['mean']:.3f} ± {e[i]['sd']:.3f}" for i in inits) +
                     f" | {e['mosmos_wins']}/{e['pairs']} | {p} |")
    if plan:
        lines += ["", study_setting(plan), "", paper_context(plan)]
    if "pretrained_maps" in summary:
        m = summary["pretrained_maps"]
        lines += ["", f"Pre-trained model's own 2D maps on {m['pictures']} held-out report pictures: AUC of an organ's "
                  f"tag map, organ tokens against the rest, {m['mean_auc']:.3f} (mean over organs; randomly "
                  f"initialised model {m['random']['mean_auc']:.3f}); after subtracting each token's mean over "
                  f"tags {m['tag_centred_auc']:.3f} (random {m['random']['tag_centred_auc']:.3f}; 0.5 = chance)."]
    return "\n".join(lines) + "\n"


STARTED = "plan.json"  # the plan of a study begun in a folder, and its pre-trained model once there is one


def _started_study(out: Path, plan: StudyPlan) -> dict:
    """What an earlier start of this same plan in ``out`` left ({} for a fresh study); refuses a folder that
    holds something else, or a study of another plan."""
    if not out.exists() or not any(out.iterdir()):
        return {}
    if not (out / STARTED).is_file():
        if (out / "study.json").is_file():
            return {}  # a finished study of an earlier version, without a plan to resume
        raise MosmosError(f"{out}: folder exists and is not an earlier study output; choose another --out")
    try:
        started = json.loads((out / STARTED).read_text())
    except (OSError, ValueError) as e:
        raise MosmosError(f"{out / STARTED}: unreadable ({e}); choose another --out") from None
    if started.get("plan") != json.loads(json.dumps(asdict(plan))):
        raise MosmosError(f"{out}: holds a study of another plan ({out / STARTED}); give the same options to "
                          f"resume it, or choose another --out")
    return started


def _write_started(out: Path, plan: StudyPlan, pretrained: Path | None) -> None:
    atomic_write_bytes(out / STARTED, json.dumps({"plan": asdict(plan), "pretrained": pretrained and
                                                   str(Path(pretrained).resolve())}, indent=2).encode())


def _read_runs_csv(path: Path, plan: StudyPlan) -> list[dict]:
    if not path.is_file():
        return []
    budget = float if plan.ratios is not None else int
    with open(path, newline="") as f:
        return [{"budget": budget(r["budget"]), "seed": int(r["seed"]), "init": r["init"],
                 "dice": float(r["dice"]), "seconds": float(r["seconds"])} for r in csv.DictReader(f)]


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
    for init, colour in (("mosmos", "tab:red"), ("random", "tab:gray"), ("clip", "tab:blue")):
        if init not in summary["table"][0]:
            continue
        mean = [e[init]["mean"] for e in summary["table"]]
        sd = [e[init]["sd"] for e in summary["table"]]
        ax.errorbar(budgets, mean, yerr=sd, marker="o", capsize=3, color=colour,
                    label=f"{init_name(init, summary['plan'])} init")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("label ratio" if summary["plan"].get("ratios") is not None else "labelled training volumes")
    ax.set_ylabel("held-out mean Dice")
    ax.set_title(f"{summary['plan']['seeds']} seeds, {summary['plan']['steps']} steps", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
