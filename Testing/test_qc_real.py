"""mosmos.qc and `mosmos qc` on real scans: TotalSegmentator's own segmentation of the example CT passes on every
organ it labels whole, and corrupted copies of it are each flagged with the right reason; the MR example passes;
a DICOM SEG is read with its own segment names; bad input is one line and exit code 2, with no report."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers import real_data
from scipy import ndimage

from mosmos.cli import main
from mosmos.qc import assess, get_profile
from mosmos.inference.labelmaps import organ_name

TS = "totalseg_example"
CT, CT_SEG = f"{TS}/example_ct.nii.gz", f"{TS}/example_seg_fast_force_split.nii.gz"
SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, GALLBLADDER, LIVER = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def ct():
    classes = json.loads(real_data(f"{TS}/class_map_subset.json").read_text())["total"]
    seg = nib.load(real_data(CT_SEG))
    image = np.asarray(nib.load(real_data(CT)).dataobj).astype(np.int16)
    return np.asarray(seg.dataobj).astype(np.int16), seg.affine, image, {int(k): v for k, v in classes.items()}


def check(ct, labels=None, image=None, affine=None, only=(SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, GALLBLADDER, LIVER)):
    """QC of the organs ``only`` (label values; None: every one present) of ``labels``."""
    seg, aff, img, classes = ct
    labels = seg if labels is None else labels
    organs = [(organ_name(classes[v]), int(v)) for v in np.unique(labels) if v and (only is None or v in only)]
    results = assess(labels, aff if affine is None else affine, organs, img if image is None else image,
                     get_profile("adult"), ct=True)
    return {r.organ: r for r in results}


def reasons(result) -> str:
    return " | ".join(result.reasons)


def test_totalsegmentator_passes_on_every_organ_it_labels_whole(ct):
    results = check(ct, only=None)
    whole = [r for r in results.values() if not any(x.startswith("cut by the scan's") for x in r.reasons)]
    assert len(whole) >= 25 and {"right kidney", "left kidney", "gallbladder", "pancreas"} <= {r.organ for r in whole}
    assert [(r.organ, r.reasons) for r in whole if r.status != "ok"] == []
    # the liver and spleen reach above the scan: asked to be checked for that reason alone
    assert results["liver"].reasons == ["cut by the scan's upper edge: its volume is a lower bound"]


def test_swapped_labels_fail_on_their_side(ct):
    seg = ct[0]
    kidneys = seg.copy()
    kidneys[seg == RIGHT_KIDNEY], kidneys[seg == LEFT_KIDNEY] = LEFT_KIDNEY, RIGHT_KIDNEY
    results = check(ct, kidneys)
    assert results["right kidney"].status == "fail" and "lies on the patient's left" in reasons(results["right kidney"])
    assert results["left kidney"].status == "fail" and "lies on the patient's right" in reasons(results["left kidney"])
    organs = seg.copy()
    organs[seg == LIVER], organs[seg == SPLEEN] = SPLEEN, LIVER
    results = check(ct, organs)
    assert "lies on the patient's left" in reasons(results["liver"])
    assert "lies on the patient's right" in reasons(results["spleen"])
    assert "above the plausible range of spleen" in reasons(results["spleen"])


def moved(seg, value, voxels):
    out = seg.copy()
    mask = seg == value
    out[mask] = 0
    out[ndimage.shift(mask.astype(np.uint8), voxels, order=0) > 0] = value
    return out


def test_an_organ_shifted_5_cm_out_of_the_body(ct):
    seg, affine = ct[0], ct[1]
    # 50 mm towards the patient's left: world -x in this RAS file (3 mm voxels)
    steps = -50.0 / affine[0, 0]
    r = check(ct, moved(seg, SPLEEN, (round(steps), 0, 0)))["spleen"]
    assert r.status == "check" and "lies outside the body" in reasons(r)
    assert "median CT value" in reasons(r)  # fat and air, not spleen


def resized(seg, value, factor):
    """The organ eroded or dilated (one voxel at a time) until its volume crosses ``factor`` times its own."""
    mask = seg == value
    target, grown = factor * mask.sum(), mask.copy()
    while (grown.sum() > target) if factor < 1 else (grown.sum() < target):
        grown = ndimage.binary_erosion(grown) if factor < 1 else ndimage.binary_dilation(grown)
    out = seg.copy()
    out[mask] = 0
    out[grown & ((out == 0) | (factor < 1))] = value
    return out


def test_eroded_and_dilated_organs_leave_their_volume_range(ct):
    seg = ct[0]
    small = check(ct, resized(seg, RIGHT_KIDNEY, 0.2))["right kidney"]
    assert small.status != "ok" and "below the plausible range of right kidney" in reasons(small)
    large = check(ct, resized(seg, LEFT_KIDNEY, 3.0))["left kidney"]
    assert large.status != "ok" and "above the plausible range of left kidney" in reasons(large)


def test_a_spurious_second_piece_is_flagged(ct):
    seg = ct[0]
    spurious = seg.copy()
    piece = ndimage.shift(resized(seg, RIGHT_KIDNEY, 0.4) == RIGHT_KIDNEY, (0, 0, -30), order=0)
    spurious[piece & (seg == 0)] = RIGHT_KIDNEY
    r = check(ct, spurious)["right kidney"]
    assert r.status == "check" and "in pieces" in reasons(r)


def test_a_scan_cut_through_the_middle_of_the_liver(ct):
    seg, affine, image, _ = ct
    middle = int(np.median(np.argwhere(seg == LIVER)[:, 2]))
    cropped = affine.copy()
    cropped[:3, 3] += affine[:3, 2] * middle
    r = check(ct, seg[:, :, middle:].copy(), image[:, :, middle:].copy(), cropped)["liver"]
    assert "cut by the scan's lower and upper edge" in reasons(r)


def test_mr_example_passes_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "qc.json"
    rc = main(["qc", str(real_data(f"{TS}/example_seg_mr.nii.gz")), "--image", str(real_data(f"{TS}/example_mr_sm.nii.gz")),
               "--labels", str(real_data(f"{TS}/class_map_subset.json")), "--task", "total_mr", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"spleen", "right kidney", "liver", "gallbladder"} <= {r["organ"] for r in report}
    assert all(set(r) == {"organ", "label", "volume_ml", "status", "reasons"} for r in report)
    whole = [r for r in report if not any(x.startswith("cut by the scan's") for x in r["reasons"])]
    assert whole and [(r["organ"], r["reasons"]) for r in whole if r["status"] != "ok"] == []
    assert "gallbladder: 30.3 mL (label 4) ok" in capsys.readouterr().out


def test_the_report_does_not_depend_on_how_the_label_map_is_stored(ct, tmp_path):
    """The CT's label map re-stored as LPS (first two axes reversed): same report as TotalSegmentator's RAS file."""
    seg, affine = ct[0], ct[1]
    flipped = affine.copy()
    for axis in (0, 1):
        flipped[:3, 3] += affine[:3, axis] * (seg.shape[axis] - 1)
        flipped[:3, axis] *= -1
    nib.save(nib.Nifti1Image(seg[::-1, ::-1].copy(), flipped), tmp_path / "lps.nii.gz")
    classes = real_data(f"{TS}/class_map_subset.json")
    reports = []
    for labels in (real_data(CT_SEG), tmp_path / "lps.nii.gz"):
        out = tmp_path / f"{len(reports)}.json"
        assert main(["qc", str(labels), "--image", str(real_data(CT)), "--labels", str(classes), "--task", "total",
                     "--out", str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    assert reports[0] == reports[1]


def test_bad_input_is_one_line_exit_2_and_no_report(tmp_path, capsys):
    out = tmp_path / "qc.json"
    small = real_data(f"{TS}/example_seg.nii.gz")  # a 30-slice crop's labels against the full CT
    assert main(["qc", str(small), "--image", str(real_data(CT)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(small) in err and "does not match the image" in err
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"1": "spleen", "2": "kidney_right"}))
    assert main(["qc", str(real_data(CT_SEG)), "--image", str(real_data(CT)), "--labels", str(partial),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(partial) in err and "not named by the class map" in err
    assert not out.exists()


def test_a_dicom_seg_is_checked_with_its_own_segment_names(tmp_path):
    from mosmos.inference.dicomseg import segmentation_dataset
    from mosmos.inference.io import read_volume

    series = real_data("dcmqi_ct3slice/ct-3slice")
    ct = read_volume(series)
    labels = read_volume(real_data("dcmqi_ct3slice/liver_spine_seg.nrrd")).array.astype(np.uint8)
    model = tmp_path / "model.bin"
    model.write_bytes(b"a stand-in for the model file the SEG names")
    organs = [{"name": "liver", "label": 1, "color": [200, 100, 80]}, {"name": "spine", "label": 2, "color": [240, 240, 200]}]
    segmentation_dataset(ct.source, labels, organs, model).save_as(tmp_path / "seg.dcm")
    out = tmp_path / "qc.json"
    assert main(["qc", str(tmp_path / "seg.dcm"), "--image", str(series), "--out", str(out)]) == 0
    report = {r["organ"]: r for r in json.loads(out.read_text())}
    assert set(report) == {"liver", "spine"}
    voxel_ml = abs(np.linalg.det(ct.affine[:3, :3])) / 1000
    assert report["liver"]["volume_ml"] == pytest.approx((labels == 1).sum() * voxel_ml, rel=1e-3)
    # three slices: cut above and below
    assert "cut by the scan's lower and upper edge" in " ".join(report["liver"]["reasons"])
