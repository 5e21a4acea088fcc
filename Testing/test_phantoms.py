"""Synthetic CT phantoms: determinism, anatomy on the right sides, CT-like HU, the Decathlon
dataset writer and the ROCO-layout slice/report folder."""

import json

import nibabel as nib
import numpy as np
import pytest

from mosmos.data.phantoms import (BTCV_LABELS, make_phantom, phantom_slices, write_decathlon_dataset,
                                  write_roco_folder)
from mosmos.errors import MosmosError

BTCV_LABELS_BY_NAME = {name: value for value, name in BTCV_LABELS.items()}
SMALL = dict(shape=(48, 48, 32), spacing=(3.0, 3.0, 4.0))


def _centroid_ras(p, value):
    ijk = np.argwhere(p.label == value).mean(axis=0)
    return p.affine[:3, :3] @ ijk + p.affine[:3, 3]


def test_deterministic_per_seed():
    a, b, c = make_phantom(3, **SMALL), make_phantom(3, **SMALL), make_phantom(4, **SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.image.dtype == np.float32 and a.label.dtype == np.uint8 and a.image.shape == SMALL["shape"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anatomy_on_the_right_sides(seed):
    p = make_phantom(seed)
    assert p.labels == BTCV_LABELS
    assert set(np.unique(p.label)) == {0, *BTCV_LABELS}
    c = {name: _centroid_ras(p, value) for value, name in p.labels.items()}
    # RAS: +X is the patient's left, +Y anterior, +Z superior.
    assert c["liver"][0] < c["spleen"][0]
    assert c["right kidney"][0] < 0 < c["left kidney"][0]
    assert c["inferior vena cava"][0] < c["aorta"][0]
    assert c["gallbladder"][0] < 0 and c["stomach"][0] > 0
    assert c["spleen"][1] < c["stomach"][1]  # spleen posterior
    assert c["right kidney"][1] < c["pancreas"][1]  # kidneys retroperitoneal
    assert c["liver"][2] > c["right kidney"][2] and c["esophagus"][2] > c["pancreas"][2]
    assert np.count_nonzero(p.label == 6) > 5 * np.count_nonzero(p.label == 1)  # liver is the big one


def test_hu_ranges_plausible():
    p = make_phantom(5)
    assert p.image[0, 0, 0] < -900  # air outside the body
    assert p.image.max() > 500  # bone
    medians = {name: float(np.median(p.image[p.label == v])) for v, name in p.labels.items()}
    for organ in ("liver", "spleen", "pancreas", "right kidney", "aorta"):
        assert 20 < medians[organ] < 250, (organ, medians[organ])
    assert -20 < medians["gallbladder"] < 40
    soft = p.image[p.label == 6]
    assert 5 < soft.std() < 40  # noise, not flat and not wild
    bone_voxels = (p.image > 400) & (p.label > 0)
    assert bone_voxels.mean() < 1e-4  # the spine is an unlabelled distractor


def test_organ_choice_and_affine():
    p = make_phantom(0, organs=["liver", 1, "aorta"], **SMALL)
    assert p.labels == {1: "spleen", 6: "liver", 8: "aorta"}
    assert set(np.unique(p.label)) == {0, 1, 6, 8}
    full = make_phantom(0, **SMALL)  # same subject: a subset only stops other organs covering these
    for value in (1, 6, 8):
        assert np.all(p.label[full.label == value] == value)
    np.testing.assert_allclose(np.diag(p.affine)[:3], SMALL["spacing"])
    np.testing.assert_allclose(p.affine[:3, :3] @ (np.array(SMALL["shape"]) - 1) / 2 + p.affine[:3, 3], 0)
    with pytest.raises(MosmosError, match="duodenum"):
        make_phantom(0, organs=["duodenum"], **SMALL)


def test_decathlon_dataset(tmp_path):
    path = write_decathlon_dataset(tmp_path / "ds", n_train=2, n_val=1, seed=7, organs=("liver", "spleen"), **SMALL)
    meta = json.loads(path.read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "spleen", "6": "liver"}
    assert len(meta["training"]) == 2 and len(meta["validation"]) == 1
    for entry in meta["training"] + meta["validation"]:
        img, lab = nib.load(path.parent / entry["image"]), nib.load(path.parent / entry["label"])
        assert img.shape == lab.shape == SMALL["shape"]
        np.testing.assert_allclose(img.affine, lab.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 6}
    first = make_phantom([7, 0], organs=("liver", "spleen"), **SMALL)
    img = nib.load(path.parent / meta["training"][0]["image"])
    np.testing.assert_allclose(img.get_fdata(), first.image, atol=0.51)
    np.testing.assert_allclose(img.affine, first.affine)


def test_slices_reports_name_the_visible_organs():
    from mosmos import tags

    items = phantom_slices(120, seed=1, image_size=48)
    assert len(items) == 120 and items[0].image.shape == (48, 48) and items[0].image.dtype == np.uint8
    agree = np.mean([set(tags.extract_tags(s.report)) == set(s.organs) for s in items])
    assert agree > 0.9
    # Organs vary between slices, so predicting tags is a real task.
    counts = {name: sum(name in s.organs for s in items) for name in BTCV_LABELS.values()}
    assert sum(0.1 * len(items) < n < 0.9 * len(items) for n in counts.values()) >= 5


def test_findings_reports_name_only_the_organs_given_a_finding():
    """reports="findings": the same slices, 0-2 visible organs get a small blob of another grey level inside them,
    and the report names exactly those organs (so a tag can only be told by looking at its organ)."""
    from mosmos import tags

    visible, findings = phantom_slices(60, seed=1, image_size=32), phantom_slices(60, seed=1, image_size=32,
                                                                                    reports="findings")
    named = 0
    for v, f in zip(visible, findings):
        assert set(tags.extract_tags(f.report)) == set(f.organs) <= set(v.organs)
        changed = f.image != v.image
        np.testing.assert_array_equal(f.label, v.label)
        if f.organs:
            named += 1
            assert changed.any() and np.isin(f.label[changed], [BTCV_LABELS_BY_NAME[o] for o in f.organs]).all()
        else:
            assert not changed.any()
    assert 0.4 * len(findings) < named < 0.95 * len(findings)
    with pytest.raises(MosmosError, match="reports 'all'"):
        phantom_slices(2, reports="all")


def test_roco_folder_round_trip(tmp_path):
    from mosmos import tags

    from mosmos.data.roco import RocoDataset, scan_roco

    root = write_roco_folder(tmp_path / "roco", n_pairs=50, seed=3, image_size=32)
    folder = root / "data" / "train" / "radiology"
    first = (folder / "captions.txt").read_text().splitlines()[0]
    assert first.startswith("ROCO_00001\t ")
    assert ".tar.gz -P /path/to/Dir\t" in (folder / "dlinks.txt").read_text()
    splits = scan_roco(root)
    assert {n: s.usable for n, s in splits.items()} == {"train": 40, "validation": 10}
    assert all(s.missing == s.unreadable == 0 for s in splits.values())
    ds = RocoDataset(root, splits=("validation",))
    image, report, vector = ds[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    np.testing.assert_array_equal(vector, tags.tag_vector(report))
    assert vector.sum() >= 0


def test_roco_folder_matches_the_generator(tmp_path):
    root = write_roco_folder(tmp_path / "r", n_pairs=10, seed=0, image_size=32, splits=("train",), image_format="png")
    expected = phantom_slices(10, seed=0, image_size=32)
    lines = (root / "data" / "train" / "radiology" / "captions.txt").read_text().splitlines()
    assert [line.split("\t", 1)[1].strip() for line in lines] == [s.report for s in expected]


def test_report_pictures_show_their_organs_at_the_finetuning_window():
    """What pre-training sees must be what fine-tuning will: each named organ is in the picture's label
    map, and the organs' grey levels are those the fine-tuning CT window (-175..250 HU -> [0, 1]) gives
    the same organs in the 3D phantoms."""
    from mosmos.data.transforms import DEFAULTS

    items = phantom_slices(60, seed=4, image_size=32)
    value = {name: v for v, name in BTCV_LABELS.items()}
    assert all(s.label.shape == s.image.shape == (32, 32) for s in items)
    assert all((s.label == value[organ]).any() for s in items for organ in s.organs)
    low, high = DEFAULTS["a_min"], DEFAULTS["a_max"]
    for organ in ("liver", "spleen"):
        picture = np.mean([s.image[s.label == value[organ]].mean() / 255 for s in items if organ in s.organs])
        volumes = [make_phantom([4, k], **SMALL) for k in range(6)]
        windowed = np.mean([np.clip((p.image[p.label == value[organ]] - low) / (high - low), 0, 1).mean()
                            for p in volumes])
        assert abs(picture - windowed) < 0.06, (organ, picture, windowed)
