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
    min_map_dice: float = 0.5          # Dice of the segment against the maps' argmax
    max_unsure: float = 0.5            # share of the segment with P(organ) < 0.5
    min_largest_share: float = 0.9     # compact organs: the largest piece's share
    max_outside_body: float = 0.1      # share of the segment outside the body
    side_margin_mm: float = 10.0       # a centroid this close to the midline says nothing about the side
    fail_factor: float = 2.0           # a volume this far beyond its bound fails rather than asks for a check
    map_weight: float = 1.0            # the maps' part of the score (the two heads share one encoder)


@dataclass(frozen=True)
class Finding:
    severity: str
    reason: str
    score: float


def volume_finding(organ: str, m: OrganMeasure, profile: Profile, t: Thresholds) -> tuple[Finding | None, float]:
    """Volume against the profile's range; also returns the volume's share of the score: 0 at the range's
    geometric centre, 1 at its bounds."""
    bounds = profile.volume_range(organ)
    if bounds is None or not m.voxels:
        return None, 0.0
    low, high = bounds
    centre = math.sqrt(low * high)
    score = abs(math.log(m.volume_ml / centre)) / math.log(high / centre)
    what = f"the plausible range of {organ} in the {profile.name} profile ({low:g}-{high:g} mL)"
    if m.volume_ml > high:
        sev = FAIL if m.volume_ml > high * t.fail_factor else CHECK
        return Finding(sev, f"volume {m.volume_ml:.0f} mL is above {what}", score), score
    if m.volume_ml < low and not m.cut_faces:  # a cut organ's volume is a lower bound
        sev = FAIL if m.volume_ml < low / t.fail_factor else CHECK
        return Finding(sev, f"volume {m.volume_ml:.1f} mL is below {what}", score), score
    return None, score if not (m.cut_faces and m.volume_ml < low) else 0.0


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
    if organ in COMPACT and m.largest_share < t.min_largest_share:
        out.append(Finding(CHECK, f"in pieces: the largest holds {100 * m.largest_share:.0f} % of it",
                           2.0 * (1.0 - m.largest_share)))
    if m.cut_faces:
        out.append(Finding(CHECK, f"cut by the scan's {' and '.join(m.cut_faces)} edge: its volume is a lower bound",
                           0.0))
    if m.outside_body > t.max_outside_body:
        out.append(Finding(CHECK, f"{100 * m.outside_body:.0f} % of it lies outside the body", 2.0 * m.outside_body))
    return out


def tissue_finding(organ: str, median_hu: float | None) -> Finding | None:
    if organ not in _SOFT_TISSUE or median_hu is None:
        return None
    low, high = _SOFT_TISSUE_HU
    if low <= median_hu <= high:
        return None
    return Finding(CHECK, f"its median CT value ({median_hu:.0f} HU) is not that of {organ} tissue "
                          f"({low:g} to {high:g} HU)", 1.0)


def map_findings(a: Agreement, t: Thresholds) -> tuple[list[Finding], float]:
    out, score = [], 0.0
    if a.map_dice is not None:
        score += 1.0 - a.map_dice
        if a.map_dice < t.min_map_dice:
            out.append(Finding(CHECK, f"the attention maps disagree (Dice {a.map_dice:.2f} with their argmax)", 0.0))
    if a.unsure_share is not None:
        score += a.unsure_share
        if a.unsure_share > t.max_unsure:
            out.append(Finding(CHECK, f"the attention map gives {100 * a.unsure_share:.0f} % of it a probability "
                                      "under 0.5", 0.0))
    return out, score * t.map_weight


def median_or_none(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None
