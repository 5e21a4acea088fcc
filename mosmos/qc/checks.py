"""The per-organ checks: each turns one measurement into a finding (a severity, a sentence for the user and a
share of the continuous QC score), or none. Thresholds live in ``Thresholds``; ``benchmarks/bench_qc.py``
chose them on one set of phantom seeds and scored them on another (docs/evidence/qc.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .agreement import Agreement
from .measure import OrganMeasure
from .profiles import COMPACT, Profile, organ_side

CHECK, FAIL = "check", "fail"
# CT only: organs whose tissue lies in a known window whatever the contrast phase (fat is below -30 HU,
# enhanced parenchyma below 300 HU); a segment whose median falls outside it is not on that organ.
_SOFT_TISSUE = frozenset({"liver", "spleen", "right kidney", "left kidney"})
_SOFT_TISSUE_HU = (-30.0, 300.0)


@dataclass(frozen=True)
class Thresholds:
    """The flags' thresholds, then the weights of the continuous QC score's parts (judge's score: higher, less
    trustworthy), each chosen by bench_qc.py on the tuning phantoms (docs/evidence/qc.md)."""

    min_map_dice: float = 0.5          # Dice of the segment against where the maps place the organ
    max_unsure: float = 0.5            # share of the segment with P(organ) < 0.5
    min_largest_share: float = 0.9     # compact organs: the largest piece's share
    max_outside_body: float = 0.1      # share of the segment outside the body
    side_margin_mm: float = 10.0       # a centroid this close to the midline says nothing about the side
    fail_factor: float = 2.0           # a volume this far beyond its bound fails rather than asks for a check
    map_weight: float = 0.5            # on 1 - the maps' Dice (the two heads share one encoder)
    unsure_weight: float = 0.0         # on the share with P(organ) < 0.5 (it repeats the Dice's news)
    pieces_weight: float = 4.0         # on 1 - the largest piece's share, any organ: a fault breaks segments up
    tissue_weight: float = 3.0         # a median CT value outside the organ's tissue window
    cut_volume_weight: float = 0.25    # the volume's part below the range's centre when the scan cuts the organ


@dataclass(frozen=True)
class Finding:
    severity: str
    reason: str
    score: float


def volume_finding(organ: str, m: OrganMeasure, profile: Profile, t: Thresholds) -> tuple[Finding | None, float]:
    """Volume against the profile's range; also returns the volume's share of the score: its log-ratio to the
    range's geometric centre, 0 there and 1 at the bounds (a factor of two beyond a bound of a range spanning
    a factor of four adds one more). The scan's edge makes a cut organ's volume a lower bound: below the centre
    its part is weighted down (a cut organ's segment can be right)."""
    bounds = profile.volume_range(organ)
    if bounds is None or not m.voxels:
        return None, 0.0
    low, high = bounds
    centre = math.sqrt(low * high)
    score = abs(math.log(m.volume_ml / centre)) / math.log(high / centre)
    if m.cut_faces and m.volume_ml < centre:
        score *= t.cut_volume_weight
    what = f"the plausible range of {organ} in the {profile.name} profile ({low:g}-{high:g} mL)"
    if m.volume_ml > high:
        sev = FAIL if m.volume_ml > high * t.fail_factor else CHECK
        return Finding(sev, f"volume {m.volume_ml:.0f} mL is above {what}", 0.0), score
    if m.volume_ml < low and not m.cut_faces:  # a cut organ's volume is a lower bound
        sev = FAIL if m.volume_ml < low / t.fail_factor else CHECK
        return Finding(sev, f"volume {m.volume_ml:.1f} mL is below {what}", 0.0), score
    return None, score


def side_finding(organ: str, m: OrganMeasure, midline_x: float, profile: Profile, t: Thresholds) -> Finding | None:
    side = organ_side(organ)
    if side is None or m.centroid is None:
        return None
    # world x grows towards the patient's right in RAS (right_sign +1)
    towards_right = (m.centroid[0] - midline_x) * profile.right_sign
    if abs(towards_right) <= t.side_margin_mm or (towards_right > 0) == (side == "right"):
        return None
    found = "right" if towards_right > 0 else "left"
    return Finding(FAIL, f"lies on the patient's {found} ({abs(towards_right):.0f} mm from the body's midline); "
                         f"the {organ} is on the {side}", 2.0)


def shape_findings(organ: str, m: OrganMeasure, t: Thresholds) -> list[Finding]:
    out = []
    if organ in COMPACT and m.largest_share < t.min_largest_share:   # its score: pieces_score, any organ
        out.append(Finding(CHECK, f"in pieces: the largest holds {100 * m.largest_share:.0f} % of it", 0.0))
    if m.cut_faces:
        out.append(Finding(CHECK, f"cut by the scan's {' and '.join(m.cut_faces)} edge: its volume is a lower bound",
                           0.0))
    if m.outside_body > t.max_outside_body:
        out.append(Finding(CHECK, f"{100 * m.outside_body:.0f} % of it lies outside the body", 2.0 * m.outside_body))
    return out


def pieces_score(m: OrganMeasure, t: Thresholds) -> float:
    return t.pieces_weight * (1.0 - m.largest_share)


def tissue_finding(organ: str, median_hu: float | None, t: Thresholds) -> Finding | None:
    if organ not in _SOFT_TISSUE or median_hu is None:
        return None
    low, high = _SOFT_TISSUE_HU
    if low <= median_hu <= high:
        return None
    return Finding(CHECK, f"its median CT value ({median_hu:.0f} HU) is not that of {organ} tissue "
                          f"({low:g} to {high:g} HU)", t.tissue_weight)


def map_findings(a: Agreement, t: Thresholds) -> tuple[list[Finding], float]:
    out, score = [], 0.0
    if a.map_dice is not None:
        score += t.map_weight * (1.0 - a.map_dice)
        if a.map_dice < t.min_map_dice:
            out.append(Finding(CHECK, f"the attention maps disagree (Dice {a.map_dice:.2f} with where they place it)",
                               0.0))
    if a.unsure_share is not None:
        score += t.unsure_weight * a.unsure_share
        if a.unsure_share > t.max_unsure:
            out.append(Finding(CHECK, f"the attention map gives {100 * a.unsure_share:.0f} % of it a probability "
                                      "under 0.5", 0.0))
    return out, score


def median_or_none(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None
