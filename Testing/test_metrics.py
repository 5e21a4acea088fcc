"""Dice / HD95 on hand-made masks with answers computed independently here; tables; Wilcoxon."""

import math

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from mosmos.errors import MosmosError
from mosmos.evaluation.metrics import (evaluate_case, markdown_table, organ_metrics, read_results_csv, spacing_from_affine, summarize, wilcoxon_p, write_tables)


def _hd95_brute_force(a, b, spacing):
    """Symmetric 95th-percentile distance between the surface voxels (mask minus its erosion)."""
    def surface(m):
        return np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing)
    sa, sb = surface(a), surface(b)
    d = cdist(sa, sb)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


@pytest.mark.parametrize("axis, spacing, expected", [
    (2, (1.0, 1.0, 2.5), 3 * 2.5),  # offset along the 2.5 mm axis
    (0, (1.0, 1.0, 2.5), 3 * 1.0),  # same voxel offset along a 1 mm axis
    (1, (0.7, 1.2, 2.5), 3 * 1.2),
])
def test_hd95_of_offset_plates_is_the_offset_in_mm(axis, spacing, expected):
    """Two parallel one-voxel plates k voxels apart: every surface voxel is exactly k*spacing from the other."""
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    index = [slice(4, 16)] * 3
    index[axis] = 5
    a[tuple(index)] = True
    index[axis] = 8
    b[tuple(index)] = True
    dice, hd95 = organ_metrics(b, a, spacing)
    assert dice == 0.0
    assert hd95 == pytest.approx(expected, abs=1e-5)


def test_offset_cubes_match_independent_computation_with_anisotropic_spacing(recwarn):
    spacing = (1.0, 1.0, 2.5)
    a = np.zeros((24, 24, 24), bool)
    b = np.zeros_like(a)
    a[4:14, 4:14, 4:14] = True  # 1000 voxels
    b[4:14, 4:14, 6:16] = True  # shifted by 2 voxels = 5 mm along the anisotropic axis
    dice, hd95 = organ_metrics(b, a, spacing)
    assert dice == pytest.approx(2 * 800 / 2000)
    assert hd95 == pytest.approx(_hd95_brute_force(b, a, spacing), abs=1e-4)
    assert 0 < hd95 <= 5.0 + 1e-6
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]  # users see no monai internals


def test_empty_masks_conventions():
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert all(math.isnan(v) for v in organ_metrics(empty, empty, (1, 1, 1)))
    dice, hd = organ_metrics(empty, full, (1, 1, 2))
    assert dice == 0.0 and hd == pytest.approx(math.sqrt(6**2 + 6**2 + 12**2))
    assert organ_metrics(full, full, (1, 1, 1)) == (1.0, 0.0)
    with pytest.raises(MosmosError, match="shape"):
        organ_metrics(full, full[:3], (1, 1, 1))


def test_evaluate_case():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:5, 1:5, 1:5] = 1
    ref[6:9, 6:9, 6:9] = 2
    pred = ref.copy()
    pred[6:9, 6:9, 6:9] = 0
    labels = {0: "background", 1: "liver", 2: "spleen", 3: "pancreas"}
    res = evaluate_case(pred, ref, labels, (1, 1, 1))
    assert list(res) == ["liver", "spleen", "pancreas"]
    assert res["liver"] == {"dice": 1.0, "hd95": 0.0}
    assert res["spleen"]["dice"] == 0.0 and math.isnan(res["pancreas"]["dice"])

    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    assert spacing_from_affine(affine) == (0.8, 0.8, 3.0)
    assert evaluate_case(pred, ref, labels, spacing_from_affine(affine))["spleen"]["hd95"] == pytest.approx(
        math.sqrt(8**2 + 8**2 + 30**2))


def _results(shift):
    rng = np.random.default_rng(0)
    return {f"case{i}": {"liver": {"dice": float(0.8 + 0.01 * i + shift + rng.normal(0, 0.002)), "hd95": 3.0},
                         "spleen": {"dice": 0.7 + shift, "hd95": 4.0 + i},
                         "pancreas": {"dice": math.nan, "hd95": math.nan}} for i in range(8)}


def test_tables_round_trip_and_summary(tmp_path):
    res = _results(0.0)
    write_tables(res, tmp_path / "r.csv", tmp_path / "r.md")
    back = read_results_csv(tmp_path / "r.csv")
    assert back.keys() == res.keys() and math.isnan(back["case0"]["pancreas"]["dice"])
    assert back["case3"]["spleen"]["hd95"] == 7.0
    s = summarize(back)
    assert s["spleen"]["dice_mean"] == pytest.approx(0.7) and s["spleen"]["n"] == 8
    assert s["pancreas"]["n"] == 0 and math.isnan(s["pancreas"]["dice_mean"])
    md = (tmp_path / "r.md").read_text()
    assert "| spleen | 70.00 ± 0.00 | 7.50 ± 2.29 | 8 |" in md and "**mean**" in md
    assert markdown_table(res) == md


def test_wilcoxon_on_paired_case_means(tmp_path):
    write_tables(_results(0.0), tmp_path / "a.csv")
    write_tables(_results(0.05), tmp_path / "b.csv")
    p, n = wilcoxon_p(tmp_path / "a.csv", tmp_path / "b.csv")
    assert n == 8 and p == pytest.approx(2 / 2**8)  # exact test: all 8 differences share one sign
    assert wilcoxon_p(tmp_path / "a.csv", tmp_path / "a.csv") == (1.0, 8)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(MosmosError, match="bad.csv: expected columns"):
        wilcoxon_p(tmp_path / "a.csv", tmp_path / "bad.csv")


def test_evaluate_command_scoring_maps_organs_by_name_and_reads_spacing_from_the_affine(tmp_path):
    """The evaluate command's per-case scoring: model and dataset number the organs differently, the
    reference file's rotated, anisotropic affine gives the spacing; answers computed independently."""
    from mosmos.evaluation.evaluate import organ_pairs, score_case

    model_labels = {0: "background", 1: "liver", 2: "spleen", 3: "pancreas"}
    dataset_labels = {0: "background", 5: "liver", 1: "spleen", 7: "left kidney"}
    pairs = organ_pairs(model_labels, dataset_labels)
    assert pairs == [("liver", 1, 5), ("spleen", 2, 1)]

    spacing = (0.7, 1.2, 2.5)
    rotation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)  # axes swapped in world space
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array(spacing)
    affine[:3, 3] = (10, -20, 5)
    ref = np.zeros((24, 20, 16), np.uint8)
    ref[4:14, 4:14, 3:9] = 5
    ref[16:20, 14:18, 10:14] = 1
    pred = np.zeros_like(ref)
    pred[4:14, 4:14, 5:11] = 1  # liver shifted by 2 slices = 5 mm along the 2.5 mm axis
    pred[16:20, 14:18, 10:14] = 2  # spleen exact
    nib.save(nib.Nifti1Image(ref, affine), str(tmp_path / "ref.nii.gz"))
    res = score_case(pred, tmp_path / "ref.nii.gz", pairs)
    liver_ref, liver_pred = ref == 5, pred == 1
    overlap = 2 * (liver_ref & liver_pred).sum()
    assert res["liver"]["dice"] == pytest.approx(overlap / (liver_ref.sum() + liver_pred.sum()))
    assert res["liver"]["hd95"] == pytest.approx(_hd95_brute_force(liver_pred, liver_ref, spacing), abs=1e-4)
    assert res["spleen"] == {"dice": 1.0, "hd95": 0.0}
    with pytest.raises(MosmosError, match="ref.nii.gz: shape"):
        score_case(pred[:-1], tmp_path / "ref.nii.gz", pairs)
