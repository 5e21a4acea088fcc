"""mosmos.qc's checks on small synthetic scans of known geometry: each check flags what it should and nothing
else, and the same body stored as RAS, LPS or on an oblique grid gives the same answers (laterality and the
scan's edges are read from the affine, never from the array's order)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mosmos.qc import (MIN_CASES, Thresholds, add_cohort_reasons, assess, cohort_reasons, get_profile,
                       profile_for_model)
from mosmos.qc.agreement import agreement

VOXEL = 8.0
SHAPE = (48, 48, 48)
ORGANS = {  # RAS mm (NIfTI: +x towards the patient's right), semi-axes mm, label value
    "liver": ((70.0, 0.0, 40.0), (70.0, 80.0, 60.0), 6),
    "spleen": ((-90.0, -40.0, 50.0), (30.0, 50.0, 40.0), 1),
    "right kidney": ((60.0, -60.0, -50.0), (25.0, 30.0, 45.0), 2),
    "left kidney": ((-60.0, -60.0, -45.0), (25.0, 30.0, 45.0), 3),
}
NAMES = [(name, value) for name, (_, _, value) in ORGANS.items()]


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def grid_affine(kind: str) -> np.ndarray:
    """A 48^3 grid at 8 mm centred on the origin, stored as RAS, as LPS (x and y reversed) or obliquely (rotated
    30 degrees about z and 20 about x, with the axes stored in another order)."""
    columns = {"RAS": np.diag([VOXEL, VOXEL, VOXEL]), "LPS": np.diag([-VOXEL, -VOXEL, VOXEL]),
               "oblique": (rotation(2, 30) @ rotation(0, 20) @ np.diag([VOXEL] * 3))[:, [2, 0, 1]]}[kind]
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = -columns @ ((np.array(SHAPE) - 1) / 2.0)
    return affine


def world_coords(affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def scan(kind: str, organs=ORGANS, body_hu: float = 40.0):
    """A CT of an elliptic body (300 x 220 mm, 300 mm long) in air, with ellipsoid organs of 50 HU."""
    affine = grid_affine(kind)
    p = world_coords(affine)
    body = ((p[..., 0] / 150) ** 2 + (p[..., 1] / 110) ** 2 < 1) & (np.abs(p[..., 2]) < 150)
    image = np.where(body, body_hu, -1000.0).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    for centre, radii, value in organs.values():
        inside = (((p - centre) / radii) ** 2).sum(-1) < 1
        labels[inside] = value
        image[inside] = 50.0
    return image, labels, affine


def by_organ(results):
    return {r.organ: r for r in results}


def run(kind="RAS", labels=None, image=None, profile="adult", **kw):
    img, lab, affine = scan(kind)
    return by_organ(assess(lab if labels is None else labels, affine, NAMES, img if image is None else image,
                           get_profile(profile), ct=True, **kw))


@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique"])
def test_a_normal_scan_passes_in_any_storage_order(kind):
    results = run(kind)
    for organ, (_, radii, _) in ORGANS.items():
        assert results[organ].status == "ok", (organ, results[organ].reasons)
    expected = 4 / 3 * math.pi * np.prod(ORGANS["spleen"][1]) / 1000
    assert results["spleen"].volume_ml == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique"])
def test_swapped_kidneys_fail_on_their_side_in_any_storage_order(kind):
    _, labels, _ = scan(kind)
    swapped = labels.copy()
    swapped[labels == 2], swapped[labels == 3] = 3, 2
    results = run(kind, labels=swapped)
    for organ, wrong in (("right kidney", "left"), ("left kidney", "right")):
        assert results[organ].status == "fail"
        assert any(f"lies on the patient's {wrong}" in r for r in results[organ].reasons), results[organ].reasons


def test_the_midline_comes_from_the_body_not_the_array_centre():
    """The body moved 70 mm towards the patient's right within the array: a left kidney 30 mm right of the
    array's centre is still 40 mm left of the body's midline, and passes."""
    organs = {name: ((c[0] + 70.0, *c[1:]), r, v) for name, (c, r, v) in ORGANS.items()}
    affine = grid_affine("RAS")
    p = world_coords(affine)
    img, lab, _ = scan("RAS", organs=organs, body_hu=40.0)
    body = (((p[..., 0] - 70) / 110) ** 2 + (p[..., 1] / 110) ** 2 < 1) & (np.abs(p[..., 2]) < 150)
    img = np.where(body | (lab > 0), np.maximum(img, 40.0) * (lab == 0) + 50.0 * (lab > 0), -1000.0)
    results = by_organ(assess(lab, affine, NAMES, img, get_profile("adult"), ct=True))
    assert results["left kidney"].status == "ok", results["left kidney"].reasons
    # the phantom profile mirrors the sides (its generator draws "right" organs at world -x)
    mirrored = by_organ(assess(lab, affine, NAMES, img, get_profile("phantom"), ct=True))
    assert any("lies on the patient's" in r for r in mirrored["left kidney"].reasons)


def test_volume_out_of_range_asks_for_a_check_or_fails_far_out():
    img, lab, affine = scan("RAS")
    small = lab.copy()
    small[(lab == 6)] = 0
    small[tuple(s // 2 for s in SHAPE)] = 6  # a liver of one 0.5 mL voxel
    results = by_organ(assess(small, affine, NAMES, img, get_profile("adult"), ct=True))
    assert results["liver"].status == "fail" and "below the plausible range of liver" in results["liver"].reasons[0]
    assert results["spleen"].status == "ok"


@pytest.mark.parametrize("kind", ["RAS", "LPS", "oblique"])
def test_a_second_piece_is_flagged(kind):
    img, lab, affine = scan(kind)
    p = world_coords(affine)
    extra = lab.copy()
    extra[(((p - (-70.0, 60.0, -60.0)) / 25.0) ** 2).sum(-1) < 1] = 2  # a blob of "right kidney" far from it
    r = by_organ(assess(extra, affine, NAMES, img, get_profile("adult"), ct=True))["right kidney"]
    assert r.status == "check" and any(x.startswith("in pieces") for x in r.reasons), r.reasons


@pytest.mark.parametrize("kind, face", [("RAS", "right"), ("LPS", "left"), ("oblique", None)])
def test_an_organ_cut_by_the_scan_names_the_edge_in_the_patients_words(kind, face):
    img, lab, affine = scan(kind)
    cut = lab.copy()
    cut[-6:] = 0  # the last 6 planes of the first array axis
    img = img.copy()
    img[-6:] = -1000.0
    cut[-1][cut[-2] == 0] = 0
    cut[-1, 20:28, 20:28] = 6  # liver voxels on the array's last plane along axis 0
    r = by_organ(assess(cut, affine, NAMES, img, get_profile("adult"), ct=True))["liver"]
    reason = [x for x in r.reasons if x.startswith("cut by the scan's")]
    assert reason, r.reasons
    if face:
        assert f"scan's {face} edge" in reason[0]


def test_absent_organ_fails():
    img, lab, affine = scan("RAS")
    lab = np.where(lab == 1, 0, lab).astype(np.uint8)
    r = by_organ(assess(lab, affine, NAMES, img, get_profile("adult"), ct=True))["spleen"]
    assert (r.status, r.reasons, r.volume_ml) == ("fail", ["not found in the scan"], 0.0)


def test_outside_the_body_and_wrong_tissue():
    img, lab, affine = scan("RAS")
    img = img.copy()
    img[lab == 1] = -1000.0  # the spleen's voxels are air: outside the body and not spleen tissue
    r = by_organ(assess(lab, affine, NAMES, img, get_profile("adult"), ct=True))["spleen"]
    assert r.status == "check"
    assert any("outside the body" in x for x in r.reasons) and any("median CT value" in x for x in r.reasons)
    # no tissue check on MR (ct=False)
    mr = by_organ(assess(lab, affine, NAMES, np.where(img > -500, 200.0, 0.0), get_profile("adult"), ct=False))
    assert not any("median CT value" in x for x in mr["spleen"].reasons)


def test_attention_maps_disagreeing_ask_for_a_check():
    img, lab, affine = scan("RAS")
    maps = lab.copy()
    maps[lab == 1] = 0  # the maps' argmax misses the spleen
    probability = {"spleen": np.where(lab == 1, 0.2, 0.0).astype(np.float32),
                   "liver": np.where(lab == 6, 0.9, 0.0).astype(np.float32)}
    results = run(map_labelmap=maps, attention=probability)
    assert results["spleen"].status == "check"
    assert any("attention maps disagree" in x for x in results["spleen"].reasons)
    assert any("probability under 0.5" in x for x in results["spleen"].reasons)
    assert results["liver"].status == "ok" and results["liver"].score < results["spleen"].score
    a = agreement(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool), np.array([0.9, 0.4, 0, 0]))
    assert a.map_dice == pytest.approx(2 / 3) and a.unsure_share == pytest.approx(0.5)
    assert Thresholds().min_map_dice == 0.5


def test_cohort_outliers_need_twenty_cases():
    rng = np.random.default_rng(0)
    cases = {f"case{i}": {"liver": {"volume_ml": float(rng.normal(1500, 100)),
                                    "offset_mm": [float(rng.normal(60, 5)), 0.0, float(rng.normal(40, 5))]}}
             for i in range(MIN_CASES)}
    cases["case0"]["liver"] = {"volume_ml": 4000.0, "offset_mm": [-60.0, 0.0, 40.0]}
    reasons = cohort_reasons(cases)
    assert set(reasons) == {"case0"}
    text = " ".join(reasons["case0"]["liver"])
    assert "above the rest of the cohort" in text and "right-left" in text
    assert cohort_reasons(dict(list(cases.items())[:MIN_CASES - 1])) == {}
    results = run()
    add_cohort_reasons({"case0": list(results.values())}, reasons)
    assert results["liver"].status == "check" and "cohort" in results["liver"].reasons[-1]


def test_the_profile_comes_from_the_model_file():
    phantom = {"card": {"data": {"folder": "dataset", "name": "MOSMOS phantoms"}}}
    assert profile_for_model(phantom).name == "phantom"
    assert profile_for_model({"card": {"data": {"folder": "btcv"}}}).name == "adult"
    assert profile_for_model({}).name == "adult"


def test_the_scores_parts_weigh_as_thresholds_say():
    """A spleen cut to 40 mL by the scan's top edge counts its low volume at cut_volume_weight of an uncut
    40 mL spleen's; a kidney cut into slabs (most of it outside its largest piece) scores pieces_weight times
    that share higher."""
    from dataclasses import replace

    from mosmos.qc.checks import volume_finding
    from mosmos.qc.measure import OrganMeasure

    t, profile = Thresholds(), get_profile("adult")
    whole = OrganMeasure(100, 40.0, np.zeros(3), 1.0, (), 0.0)
    cut = replace(whole, cut_faces=("upper",))
    (found, uncut_score), (none, cut_score) = volume_finding("spleen", whole, profile, t), \
        volume_finding("spleen", cut, profile, t)
    assert found.severity == "check" and none is None
    assert cut_score == pytest.approx(uncut_score * t.cut_volume_weight) and cut_score > 0
    img, labels, affine = scan("RAS")
    split = labels.copy()
    split[(labels == 2) & (np.arange(SHAPE[2]) % 3 == 0)[None, None, :]] = 0   # the kidney cut in slabs
    whole_kidney, pieces = run(), run(labels=split)
    assert pieces["right kidney"].score > whole_kidney["right kidney"].score + 0.5 * t.pieces_weight
