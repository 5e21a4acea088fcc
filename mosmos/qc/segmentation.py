"""QC of a MOSMOS segmentation result, as the front doors (``mosmos segment``, cohorts) attach it: each organ of
``result.organs`` gains ``status`` and ``reasons`` (and ``offset_mm``, its centroid from the body's centre), so
the volumes files, the progress events and the printed lines carry them wherever the organs go. The anatomy
checks, and the agreement of each segment with its attention map as the segmenter measured it on its own grid
(``result.agreement``): reading the maps back on the input grid for QC would cost more than QC may add to a run
(3 %)."""

from __future__ import annotations

import numpy as np

from .profiles import get_profile, profile_for_model
from .report import OrganQC, assess


def check_result(result, image: np.ndarray, header: dict, profile: str | None = None,
                 modality: str | None = None) -> list[OrganQC]:
    """QC of ``result`` (a SegmentationResult on the grid of ``image``) against ``profile`` (default: the one
    the model file's ``header`` calls for); ``modality``: the image's, when its file says (else the model's)."""
    chosen = get_profile(profile) if profile else profile_for_model(header)
    ct = str(modality or header.get("modality") or "CT").upper() == "CT"
    results = assess(result.labelmap, result.affine, [(o["name"], o["label"]) for o in result.organs], image,
                     chosen, ct, agreements=result.agreement)
    for organ, qc in zip(result.organs, results):
        organ["status"], organ["reasons"] = qc.status, qc.reasons
        if qc.offset_mm is not None:  # where the organ lies from the body's centre: the cohort's check reads it
            organ["offset_mm"] = qc.offset_mm
    return results


def status_text(organ: dict) -> str:
    """An organ's QC as the command line prints it beside its volume: "ok", or the status and its reasons."""
    if "status" not in organ:
        return ""
    return organ["status"] + (": " + "; ".join(organ["reasons"]) if organ["reasons"] else "")


def case_columns(organs: list[dict]) -> dict[str, str]:
    """A cohort case's QC in its cases.csv line: the organs to check and those that failed, "; "-separated."""
    return {f"qc_{status}": "; ".join(o["name"] for o in organs if o.get("status") == status)
            for status in ("check", "fail")}
