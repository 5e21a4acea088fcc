"""The cohort's QC report (mosmos.inference.cohort_qc, mosmos.qc.cohort_report, mosmos.qc.thumbnails) on
synthetic measurements and arrays: the cohort's outliers need 20 finished cases, the page puts the flagged cases
and organs first, and a thumbnail shows the organ where it is in the patient whatever the file's storage order.
test_qc_segment.py runs it at the end of a real (stub network) cohort."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mosmos.inference.cohort_qc import add_cohort_outliers
from mosmos.qc import MIN_CASES
from mosmos.qc.cohort_report import CaseQC, cohort_page
from mosmos.qc.thumbnails import OUTLINE, organ_thumbnail


def organs_of(n: int) -> dict:
    rng = np.random.default_rng(1)
    cases = {f"case{i:02d}": [{"name": "liver", "label": 1, "status": "ok", "reasons": [],
                               "volume_ml": float(rng.normal(1500, 100)),
                               "offset_mm": [float(rng.normal(-60, 5)), 0.0, float(rng.normal(40, 5))]}]
             for i in range(n)}
    cases["case00"][0]["volume_ml"] = 4000.0
    cases["unfinished"] = None
    return cases


def test_the_cohorts_outliers_need_twenty_finished_cases():
    few = organs_of(MIN_CASES - 1)   # with the unfinished case: 20 cases, 19 finished
    add_cohort_outliers(few)
    assert all(per[0]["status"] == "ok" for per in few.values() if per)
    enough = organs_of(MIN_CASES)
    add_cohort_outliers(enough)
    flagged = {name: per[0] for name, per in enough.items() if per and per[0]["status"] != "ok"}
    assert list(flagged) == ["case00"] and flagged["case00"]["status"] == "check"
    assert "above the rest of the cohort" in flagged["case00"]["reasons"][0]


def test_the_page_lists_the_flagged_cases_and_organs_first():
    def organ(name, status):
        return {"name": name, "volume_ml": 10.0, "status": status, "reasons": [f"{name} <reason>"] * (status != "ok")}
    rows = [CaseQC("a-ok", True, [organ("liver", "ok")]), CaseQC("b-gone", False),
            CaseQC("c-check", True, [organ("liver", "ok"), organ("spleen", "check")]),
            CaseQC("d-fail", True, [organ("kidney", "check"), organ("aorta", "fail")])]
    page = cohort_page(rows, "QC", "a note")
    order = [page.index(f"<tr><td>{name}</td>") for name in ("d-fail", "c-check", "b-gone", "a-ok")]
    assert order == sorted(order)
    assert page.index("<b>aorta</b>") < page.index("<b>kidney</b>")     # failed before check within a row
    assert "spleen &lt;reason&gt;" in page and "<reason>" not in page   # text escaped
    assert "4 cases: 1 with a failed organ, 1 with organs to check, 1 ok, 1 not finished" in page


def test_a_thumbnail_shows_the_patients_right_on_the_left_whatever_the_storage():
    """A box on the patient's right (world +x in RAS) at the front, stored RAS and LPS: the same picture, the
    outline in the left half of the axial slice and in its upper half (anterior at the top)."""
    shape = (60, 60, 30)
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[36:44, 36:44, 10:18] = 1   # +x: right; +y: anterior; the picture is 60 mm around it
    image[labels == 1] = 100
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    lps = ras.copy()
    lps[:2, :2] *= -1
    lps[:2, 3] = [2.0 * 59, 2.0 * 59]   # the same world positions, stored with x and y reversed
    a = organ_thumbnail(image, labels, ras, 1)
    b = organ_thumbnail(image[::-1, ::-1], labels[::-1, ::-1], lps, 1)
    assert a == b and organ_thumbnail(image, labels, ras, 2) is None
    picture = np.asarray(Image.open(io.BytesIO(a)))
    outline = np.argwhere((picture == OUTLINE).all(-1))
    assert picture.shape == (128, 128 + 4 + 128, 3)   # axial and coronal, 60 mm square each
    axial = outline[outline[:, 1] < 128]
    assert len(axial) > 20 and axial[:, 1].mean() < 64 and axial[:, 0].mean() < 64
