"""Does mosmos.qc flag the segmentations that are wrong? The demo's fine-tuned model on held-out phantoms, clean
and with injected failures, every organ's QC score and status against its true Dice.

Phantoms of the demo's held-out grid (96^3 at 2 mm), seeds 100..104 to choose the thresholds and 110..114 to
score them (5 + 5 phantoms x 7 conditions x 6 organs = 420 organ segmentations) (none used in training: the demo trains on seeds [1, i]). Each phantom is segmented for the demo's
six tags as it is and under six faults:

- noise: Gaussian noise of 250 HU added;
- inverted: contrast inverted (HU negated);
- removed: one organ (a different one per seed) painted over with fat in the image and left out of the truth,
  so the right answer is an empty segment (Dice of empty against empty counts as 1);
- flipped: the header mirrored left-right (the affine's x axis reversed) over unchanged voxels;
- truncated: the field of view cut 40 slices above its lower edge (image and truth);
- mr: MR-like intensities (fat bright, water and air dark, a T1-like mapping of HU).

Thresholds (min_map_dice, max_unsure, min_largest_share, max_outside_body) are chosen on the tuning seeds as
the grid point with the highest Youden J of "status is not ok" for "Dice < 0.5" among those where at least
80 % of the flagged organs have Dice < 0.7, then the score's weights (the maps', pieces', tissue's, a cut
organ's volume's) by its AUROC; the scoring seeds then give the AUROC of the QC score for
"Dice < 0.5" and the share of flagged organs with Dice < 0.7. Also: the QC's seconds against the
segmentation's (attention maps on), per case.

    OMP_NUM_THREADS=1 python benchmarks/bench_qc.py [--model demo-out/finetune-mosmos/model.safetensors]
        [--evidence qc-evidence.pkl]
    python benchmarks/bench_qc.py --derive-profile     # the phantom profile's volumes (seeds 200..239)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pickle
import time
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from mosmos.data.phantoms import BTCV_LABELS, make_phantom
from mosmos.experiments.demo import DEMO_TAGS, HELD_OUT_SHAPE, HELD_OUT_SPACING
from mosmos.files.modelfile import read_header
from mosmos.qc import Thresholds, gather, get_profile, judge, profile_for_model

FAULTS = ("clean", "noise", "inverted", "removed", "flipped", "truncated", "mr")
VALUE_OF = {name: value for value, name in BTCV_LABELS.items()}
GRID = {"min_map_dice": (0.2, 0.3, 0.4, 0.5, 0.6), "max_unsure": (0.3, 0.5, 0.7, 0.9),
        "min_largest_share": (0.7, 0.8, 0.9, 0.95), "max_outside_body": (0.05, 0.1, 0.2)}
# The score's weights (Thresholds), chosen by the score's AUROC on the tuning seeds.
WEIGHTS = {"map_weight": (0.25, 0.5, 1.0, 2.0), "unsure_weight": (0.0, 0.5, 1.0), "pieces_weight": (1.0, 2.0, 3.0, 4.0),
           "tissue_weight": (1.0, 2.0, 3.0), "cut_volume_weight": (0.0, 0.25, 0.5, 1.0)}


def faulted(p, seed: int, fault: str):
    """(image, truth, affine) of phantom ``p`` (made from ``seed``) under ``fault``."""
    image, truth, affine = p.image.copy(), p.label.copy(), p.affine.copy()
    rng = np.random.default_rng(seed)
    if fault == "noise":
        image += rng.normal(0, 250, image.shape).astype(np.float32)
    elif fault == "inverted":
        image = -image
    elif fault == "removed":
        value = VALUE_OF[DEMO_TAGS[seed % len(DEMO_TAGS)]]
        image[truth == value] = -90.0
        truth[truth == value] = 0
    elif fault == "flipped":
        affine[:3, 3] += affine[:3, 0] * (image.shape[0] - 1)
        affine[:3, 0] *= -1
    elif fault == "truncated":
        image, truth = image[:, :, 40:].copy(), truth[:, :, 40:].copy()
        affine[:3, 3] += affine[:3, 2] * 40
    elif fault == "mr":
        image = np.interp(image, [-1000, -200, -100, -50, 0, 40, 80, 300, 1000],
                          [0, 300, 420, 380, 60, 180, 230, 140, 40]).astype(np.float32)
    return image, truth, affine


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    size = int(pred.sum()) + int(ref.sum())
    return 2.0 * int((pred & ref).sum()) / size if size else 1.0


def collect(model: str, seeds) -> tuple[list[dict], dict]:
    from mosmos.inference.segmenter import Segmenter

    segmenter = Segmenter(model, device="cpu")
    rows, seconds = [], {"segment": 0.0, "qc": 0.0, "agreement": 0.0}
    for seed, fault in itertools.product(seeds, FAULTS):
        if fault == FAULTS[0]:
            phantom = make_phantom(seed, HELD_OUT_SHAPE, HELD_OUT_SPACING)
        image, truth, affine = faulted(phantom, seed, fault)
        t = time.perf_counter()
        res = segmenter.segment(image, affine, tags=DEMO_TAGS)
        t_seg = time.perf_counter() - t
        t = time.perf_counter()
        # the maps' agreement as `mosmos segment` has it: measured by the segmenter on its grid (in t_seg)
        evidence = gather(res.labelmap, affine, [(o["name"], o["label"]) for o in res.organs], image, True,
                          agreements=res.agreement)
        seconds["qc"] += time.perf_counter() - t + res.seconds["agreement"]
        seconds["agreement"] += res.seconds["agreement"]
        seconds["segment"] += t_seg - res.seconds["agreement"]
        for e in evidence:
            rows.append({"seed": seed, "fault": fault, "organ": e.organ, "evidence": e,
                         "dice": dice(res.labelmap == e.label, truth == VALUE_OF[e.organ])})
        print(f"seed {seed} {fault:9s} " + " ".join(f"{r['organ']}={r['dice']:.2f}" for r in rows[-len(evidence):]),
              flush=True)
    return rows, seconds


def auroc(scores, positive) -> float:
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def judged(rows, thresholds: Thresholds):
    profile = get_profile("phantom")
    return [judge(r["evidence"], profile, thresholds) for r in rows]


def rates(rows, results) -> dict:
    bad = np.array([r["dice"] < 0.5 for r in rows])
    flagged = np.array([q.status != "ok" for q in results])
    below_07 = np.array([r["dice"] < 0.7 for r in rows])
    return {"organs": len(rows), "dice_below_0.5": int(bad.sum()), "flagged": int(flagged.sum()),
            "tpr": float(flagged[bad].mean()) if bad.any() else float("nan"),
            "fpr": float(flagged[~bad].mean()) if (~bad).any() else float("nan"),
            "flagged_with_dice_below_0.7": float(below_07[flagged].mean()) if flagged.any() else float("nan"),
            "auroc_score": auroc([q.score for q in results], bad)}


def choose(rows) -> Thresholds:
    """The flags' thresholds by Youden J (at >= 80 % of flagged organs with Dice < 0.7), then the score's weights
    by its AUROC (the first best in WEIGHTS' order on a tie)."""
    best, best_key = Thresholds(), None
    for values in itertools.product(*GRID.values()):
        t = dataclasses.replace(Thresholds(), **dict(zip(GRID, values)))
        r = rates(rows, judged(rows, t))
        key = (r["flagged_with_dice_below_0.7"] >= 0.8, r["tpr"] - r["fpr"], r["flagged_with_dice_below_0.7"])
        if best_key is None or key > best_key:
            best, best_key = t, key
    bad = [r["dice"] < 0.5 for r in rows]
    weights = [dataclasses.replace(best, **dict(zip(WEIGHTS, values)))
               for values in itertools.product(*WEIGHTS.values())]
    return max(weights, key=lambda t: auroc([q.score for q in judged(rows, t)], bad))


def dump(rows, results) -> list[dict]:
    """Each scored organ: what was measured, its truth and its judgement (to study the misses)."""
    out = []
    for r, q in zip(rows, results):
        e = r["evidence"]
        out.append({"seed": r["seed"], "fault": r["fault"], "organ": r["organ"], "dice": round(r["dice"], 4),
                    "status": q.status, "score": round(q.score, 4), "reasons": q.reasons,
                    "volume_ml": round(e.measure.volume_ml, 2), "largest_share": round(e.measure.largest_share, 3),
                    "outside_body": round(e.measure.outside_body, 3), "cut": list(e.measure.cut_faces),
                    "map_dice": None if e.agreement is None else e.agreement.map_dice,
                    "unsure": None if e.agreement is None else e.agreement.unsure_share})
    return out


def signal_aurocs(rows) -> dict:
    """Each signal alone, for "Dice < 0.5" (higher: worse)."""
    bad = [r["dice"] < 0.5 for r in rows]
    ev = [r["evidence"] for r in rows]
    profile = get_profile("phantom")

    def volume(e):
        low, high = profile.volume_range(e.organ)
        return abs(np.log(max(e.measure.volume_ml, 1e-3) / np.sqrt(low * high)))
    return {"maps_dice": auroc([1 - e.agreement.map_dice if e.agreement and e.agreement.map_dice is not None
                                else 1.0 for e in ev], bad),
            "volume": auroc([volume(e) for e in ev], bad)}


def by_fault(rows, results) -> dict:
    out = {}
    for fault in FAULTS:
        idx = [i for i, r in enumerate(rows) if r["fault"] == fault]
        out[fault] = {"organs": len(idx), "mean_dice": float(np.mean([rows[i]["dice"] for i in idx])),
                      "dice_below_0.5": sum(rows[i]["dice"] < 0.5 for i in idx),
                      **{s: sum(results[i].status == s for i in idx) for s in ("ok", "check", "fail")}}
    return out


def derive_profile() -> None:
    volumes: dict[str, list[float]] = {}
    voxel_ml = float(np.prod(HELD_OUT_SPACING)) / 1000
    for seed in range(200, 240):
        p = make_phantom(seed, HELD_OUT_SHAPE, HELD_OUT_SPACING)
        counts = np.bincount(p.label.ravel(), minlength=max(BTCV_LABELS) + 1)
        for value, name in p.labels.items():
            volumes.setdefault(name, []).append(counts[value] * voxel_ml)
    print(json.dumps({n: (round(min(v), 1), round(max(v), 1)) for n, v in volumes.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-out/finetune-mosmos/model.safetensors")
    ap.add_argument("--tune-seeds", type=int, nargs=2, default=(100, 105), metavar=("FIRST", "END"))
    ap.add_argument("--score-seeds", type=int, nargs=2, default=(110, 115), metavar=("FIRST", "END"))
    ap.add_argument("--out", default="bench_qc.json", help="the measurements as JSON")
    ap.add_argument("--evidence", help="keep what was measured of every organ in this file (pickle), and judge "
                                       "it again from there when it exists, without segmenting")
    ap.add_argument("--derive-profile", action="store_true")
    args = ap.parse_args()
    if args.derive_profile:
        return derive_profile()
    if args.evidence and Path(args.evidence).exists():   # the segmentations of an earlier run, judged again
        with open(args.evidence, "rb") as f:
            tune, tune_s, score, score_s = pickle.load(f)
    else:
        tune, tune_s = collect(args.model, range(*args.tune_seeds))
        score, score_s = collect(args.model, range(*args.score_seeds))
        if args.evidence:
            with open(args.evidence, "wb") as f:
                pickle.dump((tune, tune_s, score, score_s), f)
    chosen = choose(tune)
    default = Thresholds()
    summary = {
        "model": args.model, "profile_the_model_calls_for": profile_for_model(read_header(args.model)).name,
        "thresholds": dataclasses.asdict(chosen),
        "tuning": rates(tune, judged(tune, chosen)), "scoring": rates(score, judged(score, chosen)),
        "scoring_default_thresholds": rates(score, judged(score, default)),
        "scoring_by_fault": by_fault(score, judged(score, chosen)),
        "scoring_signals_alone": signal_aurocs(score),
        "qc_seconds_per_segment_second": (tune_s["qc"] + score_s["qc"]) / (tune_s["segment"] + score_s["segment"]),
        "seconds": {k: tune_s[k] + score_s[k] for k in tune_s},
        "scoring_organs": dump(score, judged(score, chosen)),
    }
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "scoring_organs"}, indent=2))


if __name__ == "__main__":
    main()
