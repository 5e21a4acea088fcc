"""Evaluation: per-organ Dice and HD95 (mm), result tables, and paired significance tests.

Conventions, per case and organ:
- organ absent from both prediction and reference: Dice and HD95 are NaN (undefined) and are
  skipped by every mean; the CSV writes them as empty cells;
- present in exactly one of them: Dice 0 and HD95 = the volume's diagonal in mm (the largest
  distance possible on that grid), so a missed or hallucinated organ is penalised rather than hidden;
- otherwise monai's Dice and symmetric 95th-percentile Hausdorff distance between the surface
  voxels, with the true voxel spacing in mm (anisotropic spacing honoured per axis).

Evaluating a MOSMOS model also gives, per case and organ, ``map_dice``: the Dice of the pixel–tag
maps' own label map (argmax of the up-sampled maps over the model's classes, background included),
so that the maps can be checked beside the network on any labelled data.

The significance test (``wilcoxon_p``) pairs the two result files by case and compares per-case
mean Dice (mean over the organs defined in that case): cases are the independent units, whereas
the organs of one case are not independent of each other.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from ..errors import MosmosError
from ..files.atomic import atomic_write_bytes

FIELDS = ("case", "organ", "dice", "hd95")
MAP_DICE = "map_dice"  # optional column: present when the results have the maps' Dice
METRICS = ("dice", "hd95", MAP_DICE)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, ...]:
    """Voxel spacing in mm of each array axis from a 4x4 voxel->world affine."""
    affine = np.asarray(affine, dtype=float)
    return tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def binary_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks on the same grid; NaN when both are empty."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    size = int(pred.sum()) + int(ref.sum())
    return 2.0 * int((pred & ref).sum()) / size if size else math.nan


def organ_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """(Dice, HD95 in mm) of two binary masks on the same grid; see the module docstring for NaN/empty cases."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise MosmosError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != pred.ndim:
        raise MosmosError(f"spacing {spacing}: needs one value per axis of a {pred.ndim}D mask")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return math.nan, math.nan
    if has_pred != has_ref:
        return 0.0, float(math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing))))
    yp = torch.from_numpy(pred)[None, None].float()
    yt = torch.from_numpy(ref)[None, None].float()
    with warnings.catch_warnings():
        # monai 1.5 passes its own deprecated get_mask_edges argument internally; not ours to act on.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=spacing)
    return binary_dice(pred, ref), float(hd95[0, 0])


def dice_scores(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..num_classes-1 of two class-index maps in one pass (no surface distances:
    cheap enough for validation during training); NaN where a class is absent from both."""
    pred, ref = np.asarray(pred, dtype=np.int64).ravel(), np.asarray(ref, dtype=np.int64).ravel()
    joint = np.bincount(ref * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    sizes = joint.sum(0) + joint.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2.0 * np.diag(joint) / sizes
    return dice[1:]


def evaluate_case(pred: np.ndarray, ref: np.ndarray, labels: Mapping[int, str],
                  spacing: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per-organ {"dice", "hd95"} of two label maps; ``labels`` maps values to organ names
    (value 0 / "background" is skipped).

    Args:
        pred: the predicted label map.
        ref: the reference label map, on the same grid.
        labels: label value -> organ name.
        spacing: the voxel size in mm, per axis of the arrays.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    out = {}
    for value, name in sorted(labels.items()):
        if int(value) == 0:
            continue
        dice, hd95 = organ_metrics(pred == int(value), ref == int(value), spacing)
        out[name] = {"dice": dice, "hd95": hd95}
    return out


# --- tables -----------------------------------------------------------------------------------

Results = dict  # case -> organ -> {"dice": float, "hd95": float[, "map_dice": float]}


def _nanmean_std(values: list[float]) -> tuple[float, float, int]:
    vals = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if vals.size == 0:
        return math.nan, math.nan, 0
    return float(vals.mean()), float(vals.std()), int(vals.size)


def _metrics_of(results: Results) -> tuple[str, ...]:
    """The metrics the results hold: Dice and HD95, and the maps' Dice where any case has it."""
    has_maps = any(MAP_DICE in m for per_case in results.values() for m in per_case.values())
    return METRICS if has_maps else METRICS[:2]


def _row(values: dict[str, list[float]]) -> dict[str, float]:
    row: dict[str, float] = {}
    for key, vals in values.items():
        row[f"{key}_mean"], row[f"{key}_std"], n = _nanmean_std(vals)
        if key == "dice":
            row["n"] = n
    return row


def summarize(results: Results) -> dict[str, dict[str, float]]:
    """Per organ (first-seen order) mean/std of Dice and HD95 (and the maps' Dice, when present) over
    the cases where it is defined, with n = that number of cases (by Dice); then "mean": over cases of
    each case's mean over its organs."""
    keys = _metrics_of(results)
    organs: list[str] = []
    for per_case in results.values():
        organs += [o for o in per_case if o not in organs]
    table = {}
    for organ in organs:
        cases = [c[organ] for c in results.values() if organ in c]
        table[organ] = _row({k: [m.get(k, math.nan) for m in cases] for k in keys})
    table["mean"] = _row({k: [_nanmean_std([m.get(k, math.nan) for m in c.values()])[0] for c in results.values()]
                          for k in keys})
    return table


def _fmt(x: float, digits: int) -> str:
    return "" if math.isnan(x) else f"{x:.{digits}f}"


def write_results_csv(results: Results, path: str | Path) -> None:
    """Long format: one row per case and organ (case, organ, dice, hd95[, map_dice]); NaN as an empty cell."""
    keys = _metrics_of(results)
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(FIELDS[:2] + keys)
    for case, per_case in results.items():
        for organ, m in per_case.items():
            w.writerow([case, organ] + [_fmt(m.get(k, math.nan), 4 if k == "hd95" else 6) for k in keys])
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def read_results_csv(path: str | Path) -> Results:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not set(FIELDS) <= set(reader.fieldnames):
                raise MosmosError(f"{path}: expected columns {', '.join(FIELDS)}")
            keys = [k for k in METRICS if k in reader.fieldnames]
            results: Results = {}
            for row in reader:
                results.setdefault(row["case"], {})[row["organ"]] = {
                    k: float(row[k]) if row[k].strip() else math.nan for k in keys}
    except OSError as e:
        raise MosmosError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise MosmosError(f"{path}: bad number ({e})") from None
    return results


def markdown_table(results: Results) -> str:
    """Per-organ mean ± std of Dice (%) and HD95 (mm), and of the pixel–tag maps' Dice (%) when the
    results have it, plus the mean over organs."""
    maps = MAP_DICE in _metrics_of(results)
    head = "| organ | Dice (%) | HD95 (mm) |" + (" maps' Dice (%) |" if maps else "") + " cases |"
    lines = [head, "|---" * head.count(" |") + "|"]

    def cell(row, key: str, scale: float) -> str:
        mean, std = row[f"{key}_mean"], row[f"{key}_std"]
        return "" if math.isnan(mean) else f"{scale * mean:.2f} ± {scale * std:.2f}"

    for organ, row in summarize(results).items():
        name = "**mean**" if organ == "mean" else organ
        cells = [cell(row, "dice", 100), cell(row, "hd95", 1)] + ([cell(row, MAP_DICE, 100)] if maps else [])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['n']} |")
    return "\n".join(lines) + "\n"


def write_tables(results: Results, csv_path: str | Path, md_path: str | Path | None = None) -> None:
    """The per-case CSV and, if asked, the Markdown summary."""
    write_results_csv(results, csv_path)
    if md_path is not None:
        atomic_write_bytes(md_path, markdown_table(results).encode("utf-8"))


def case_mean_dice(results: Results) -> dict[str, float]:
    return {case: _nanmean_std([m["dice"] for m in per_case.values()])[0] for case, per_case in results.items()}


def wilcoxon_p(a: str | Path | Results, b: str | Path | Results) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p-value of per-case mean Dice, paired by case; returns (p, n pairs).

    p = 1.0 when the two results agree on every case.

    Args:
        a: one run's results: a results.json or its parsed Results.
        b: the other run's, paired with ``a`` by case.
    """
    from scipy.stats import wilcoxon

    ra = a if isinstance(a, dict) else read_results_csv(a)
    rb = b if isinstance(b, dict) else read_results_csv(b)
    ma, mb = case_mean_dice(ra), case_mean_dice(rb)
    cases = [c for c in ma if c in mb and not math.isnan(ma[c]) and not math.isnan(mb[c])]
    if not cases:
        raise MosmosError(f"{a if not isinstance(a, dict) else 'results'}: no case in common with "
                          f"{b if not isinstance(b, dict) else 'the other results'}")
    diffs = np.array([ma[c] - mb[c] for c in cases])
    if np.all(diffs == 0):
        return 1.0, len(cases)
    return float(wilcoxon(diffs).pvalue), len(cases)
