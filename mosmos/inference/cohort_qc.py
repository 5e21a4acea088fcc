"""A cohort's QC at the end of its run: every finished case's organs (OUT/<case>/volumes.json, with each organ's
status, reasons and position from its own QC) and, with at least ``qc.MIN_CASES`` finished cases, each case's
organ volumes and positions against the cohort's robust distribution (qc.cohort); written as OUT/qc.html with a
thumbnail of each flagged organ (from the case's label map and its input image, read again for those cases
only). The cohort's outliers are in the report alone: a case's folder is final once it is renamed into place.
Written atomically, from whatever has finished, by each run at its end (the last rank to finish sees the most)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from ..files.atomic import atomic_write_bytes
from ..qc import MIN_CASES, cohort_reasons
from ..qc.checks import CHECK, FAIL
from ..qc.cohort_report import CaseQC, cohort_page
from ..qc.thumbnails import organ_thumbnail
from .cohort import LABELS, VOLUMES, Case

REPORT_NAME = "qc.html"


def finished_organs(out: Path, cases: list[Case]) -> dict[str, list[dict] | None]:
    """case -> its organs (volumes.json), or None when the case has no finished folder."""
    organs = {}
    for case in cases:
        path = out / case.name / VOLUMES
        try:
            organs[case.name] = json.loads(path.read_text())["organs"] if path.is_file() else None
        except (OSError, ValueError, KeyError) as e:
            raise MosmosError(f"{path}: cannot read the case's organ volumes ({e})") from None
    return organs


def add_cohort_outliers(organs: dict[str, list[dict] | None]) -> None:
    """Add the cohort's outlier reasons to the finished cases' organs (an outlier asks for a check; the check
    needs MIN_CASES finished cases)."""
    finished = {name: per for name, per in organs.items() if per is not None}
    measured = {name: {o["name"]: {"volume_ml": o["volume_ml"], "offset_mm": o.get("offset_mm")}
                       for o in per if o.get("volume_ml")} for name, per in finished.items()}
    for name, per_organ in cohort_reasons(measured).items():
        for o in finished[name]:
            if per_organ.get(o["name"]):
                o["reasons"] = list(o.get("reasons", [])) + per_organ[o["name"]]
                o["status"] = FAIL if o.get("status") == FAIL else CHECK


def add_thumbnails(out: Path, case: Case, organs: list[dict]) -> None:
    """The thumbnail of each flagged organ of ``case``, from its label map and input image (none for a study
    fetched from DICOMweb: its image is not kept)."""
    flagged = [o for o in organs if o.get("status") in (CHECK, FAIL) and o.get("volume_ml")]
    if not flagged or case.path is None:
        return
    import nibabel as nib

    from .io import read_volume

    labels_path = out / case.name / LABELS
    try:
        labels = np.asarray(nib.load(str(labels_path)).dataobj)
    except Exception as e:  # nibabel's own errors: any unreadable file
        raise MosmosError(f"{labels_path}: cannot read the case's label map ({e})") from None
    volume = read_volume(case.path, case.series)
    if volume.array.shape != labels.shape:
        raise MosmosError(f"{labels_path}: its grid {labels.shape} is not its image's {volume.array.shape}")
    for o in flagged:
        o["thumbnail"] = organ_thumbnail(volume.array, labels, volume.affine, int(o["label"]))


def write_cohort_qc(out: Path, cases: list[Case]) -> Path:
    """OUT/qc.html from every finished case of ``cases``; a case whose thumbnails cannot be made keeps its row
    without them (and a warning), so one unreadable input does not cost the cohort its report."""
    organs = finished_organs(out, cases)
    add_cohort_outliers(organs)
    rows = []
    for case in cases:
        per = organs[case.name]
        if per is not None:
            try:
                add_thumbnails(out, case, per)
            except MosmosError as e:
                print(f"mosmos segment: warning: {case.name}: no thumbnails in {REPORT_NAME} ({e})", file=sys.stderr)
        rows.append(CaseQC(case.name, per is not None, per or []))
    n = sum(r.finished for r in rows)
    note = (f"Each organ's quality check (mosmos.qc) from its own case; with {n} finished cases "
            + ("each case's organ volumes and positions are also checked against the rest of the cohort."
               if n >= MIN_CASES else f"the cohort's own check (at least {MIN_CASES} finished cases) did not run."))
    path = out / REPORT_NAME
    atomic_write_bytes(path, cohort_page(rows, f"Quality check of {len(rows)} cases", note).encode())
    return path
