"""One segmentation's QC: every organ measured on the physical grid, checked against a reference profile
(and the attention maps where they exist), and given a status (``ok``, ``check`` or ``fail``) with its
reasons in plain sentences and a continuous score (higher: less trustworthy)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..files.atomic import atomic_write_bytes
from .agreement import Agreement, agreement
from .checks import (CHECK, FAIL, Finding, Thresholds, map_findings, median_or_none, pieces_score, shape_findings,
                     side_finding, tissue_finding, volume_finding)
from .measure import OrganMeasure, find_body, measure_organ, organ_box
from .profiles import Profile

OK = "ok"
_ABSENT_SCORE = 5.0


@dataclass
class OrganQC:
    organ: str
    label: int
    volume_ml: float
    status: str
    reasons: list[str]
    score: float
    offset_mm: list[float] | None = field(default=None)  # centroid minus the body's centre (the cohort check)

    def record(self) -> dict:
        """The object a report lists (``mosmos qc --out``, ``mosmos segment --volumes``)."""
        return {"organ": self.organ, "label": self.label, "volume_ml": round(self.volume_ml, 3),
                "status": self.status, "reasons": list(self.reasons)}


def status_of(findings: Sequence[Finding]) -> str:
    severities = {f.severity for f in findings}
    return FAIL if FAIL in severities else CHECK if CHECK in severities else OK


@dataclass(frozen=True)
class Evidence:
    """What was measured of one organ, before any threshold: judged by ``judge`` (the benchmark judges the same
    evidence under many thresholds)."""

    organ: str
    label: int
    measure: OrganMeasure
    agreement: Agreement | None
    median_hu: float | None
    midline_x: float
    body_center: np.ndarray


def gather(labelmap: np.ndarray, affine: np.ndarray, organs: Sequence[tuple[str, int]], image: np.ndarray, ct: bool,
           map_labelmap: np.ndarray | None = None, attention: Mapping[str, np.ndarray] | None = None,
           agreements: Mapping[str, Agreement] | None = None) -> list[Evidence]:
    """Measure each (organ, label value) of ``organs`` in ``labelmap`` (X, Y, Z, on the grid of ``affine`` and of
    ``image``); ``ct``: the image is in HU. The agreement with the attention maps: given (``agreements``, organ
    -> Agreement, as a segmentation run measures it on its own grid), or measured here from the maps' label map
    and probabilities on this grid."""
    body = find_body(image, affine, ct)
    boxes = organ_box(labelmap)
    out = []
    for organ, value in organs:
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        m, sub = measure_organ(labelmap, value, box, affine, body)
        maps, hu = None, None
        if m.voxels:
            hu = median_or_none(np.asarray(image[box])[sub]) if ct else None
            probability = attention.get(organ) if attention and organ in attention else None
            if agreements is not None:
                maps = agreements.get(organ)
            elif map_labelmap is not None or probability is not None:
                maps = agreement(sub, None if map_labelmap is None else map_labelmap[box] == value,
                                 None if probability is None else np.asarray(probability)[box])
        out.append(Evidence(organ, value, m, maps, hu, body.midline_x, body.center))
    return out


def judge(e: Evidence, profile: Profile, thresholds: Thresholds = Thresholds()) -> OrganQC:
    """One organ's status, reasons and score from its evidence."""
    m = e.measure
    if not m.voxels:
        return OrganQC(e.organ, e.label, 0.0, FAIL, ["not found in the scan"], _ABSENT_SCORE)
    volume, volume_score = volume_finding(e.organ, m, profile, thresholds)
    findings = [f for f in (volume, side_finding(e.organ, m, e.midline_x, profile, thresholds),
                            tissue_finding(e.organ, e.median_hu, thresholds)) if f]
    findings += shape_findings(e.organ, m, thresholds)
    map_score = 0.0
    if e.agreement is not None:
        found, map_score = map_findings(e.agreement, thresholds)
        findings += found
    # the score sums each finding's share and the continuous parts (volume, pieces, maps), weighted as
    # Thresholds says
    score = volume_score + pieces_score(m, thresholds) + map_score + sum(f.score for f in findings)
    return OrganQC(e.organ, e.label, m.volume_ml, status_of(findings), [f.reason for f in findings], score,
                   [round(float(v), 1) for v in m.centroid - e.body_center])


def assess(labelmap: np.ndarray, affine: np.ndarray, organs: Sequence[tuple[str, int]], image: np.ndarray,
           profile: Profile, ct: bool, map_labelmap: np.ndarray | None = None,
           attention: Mapping[str, np.ndarray] | None = None, thresholds: Thresholds = Thresholds(),
           agreements: Mapping[str, Agreement] | None = None) -> list[OrganQC]:
    """QC of each (organ, label value) of ``organs`` in ``labelmap`` (X, Y, Z, on the grid of ``affine`` and of
    ``image``) against ``profile``; ``ct``: the image is in HU. An organ of ``organs`` with no voxel was asked
    for and is absent. The maps' agreement as ``gather`` takes it."""
    return [judge(e, profile, thresholds)
            for e in gather(labelmap, affine, organs, image, ct, map_labelmap, attention, agreements)]


def add_cohort_reasons(results: Mapping[str, list[OrganQC]], reasons: Mapping[str, Mapping[str, list[str]]]) -> None:
    """Add the cohort's outlier reasons (``cohort.cohort_reasons``) to each case's results: an outlier asks for a
    check."""
    for case, per_organ in reasons.items():
        for qc in results.get(case, []):
            extra = per_organ.get(qc.organ)
            if extra:
                qc.reasons += extra
                qc.status = FAIL if qc.status == FAIL else CHECK


def write_report(path, results: Sequence[OrganQC]) -> None:
    """The report as a JSON list, one object per organ, written atomically (no partial report)."""
    atomic_write_bytes(path, (json.dumps([r.record() for r in results], indent=2) + "\n").encode())
