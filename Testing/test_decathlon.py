"""Decathlon-layout reader, case checks and the MONAI pre-processing pipelines."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mosmos.data.decathlon import check_case, label_subset, load_decathlon
from mosmos.data.phantoms import write_decathlon_dataset
from mosmos.data.transforms import build_train_transforms, build_val_transforms, preprocessing_config
from mosmos.errors import MosmosError


def _nifti(path, data, spacing=(1.5, 1.5, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([*spacing, 1.0])), str(path))


def _folder(tmp_path, labels, json_name="dataset.json", n=2, label_data=None, extra=None):
    entries = []
    for i in range(n):
        _nifti(tmp_path / f"imagesTr/img{i:04d}.nii.gz", np.zeros((8, 8, 4), np.int16))
        _nifti(tmp_path / f"labelsTr/label{i:04d}.nii.gz",
               np.zeros((8, 8, 4), np.uint8) if label_data is None else label_data)
        entries.append({"image": f"./imagesTr/img{i:04d}.nii.gz", "label": f"./labelsTr/label{i:04d}.nii.gz"})
    data = {"labels": labels, "modality": {"0": "CT"}, "training": entries[:1], "validation": entries[1:],
            "test": ["imagesTr/img0000.nii.gz"], **(extra or {})}
    (tmp_path / json_name).write_text(json.dumps(data))
    return tmp_path


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_decathlon_dataset(root, 2, 1, seed=0, shape=(48, 48, 24))
    return root


def test_reads_phantom_dataset(phantom_dir):
    spec = load_decathlon(phantom_dir)
    assert spec.modality == "CT" and spec.in_channels == 1
    assert len(spec.training) == 2 and len(spec.validation) == 1 and spec.test == []
    assert spec.labels[0] == "background" and spec.labels[6] == "liver"
    case = spec.training[0]
    assert case["name"] == "phantom_000" and case["image"].is_file() and case["label"].is_file()
    info = check_case(case, spec.labels)
    assert info["shape"] == (48, 48, 24) and info["spacing"] == (1.5, 1.5, 2.0)
    assert set(info["values"]) <= set(spec.labels)


BTCV_LABELS = {"0": "background", "1": "spleen", "2": "rkid", "3": "lkid", "4": "gall", "5": "eso", "6": "liver",
               "7": "sto", "8": "aorta", "9": "IVC", "10": "veins", "11": "pancreas", "12": "rad", "13": "lad"}


def test_btcv_dataset_0_json_names(tmp_path):
    spec = load_decathlon(_folder(tmp_path, BTCV_LABELS, json_name="dataset_0.json"))
    assert spec.json_path.name == "dataset_0.json"
    assert spec.tags == ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
                         "aorta", "inferior vena cava", "portal vein and splenic vein", "pancreas",
                         "right adrenal gland", "left adrenal gland"]
    assert spec.num_classes == 14 and spec.label_values == list(range(14))
    assert spec.test[0]["label"] is None and spec.test[0]["name"] == "img0000"


def test_amos_postcava_and_open_set_names(tmp_path):
    labels = {"0": "background", "1": "liver", "2": "postcava", "3": "duodenum", "4": "prostate/uterus",
              "5": "urinary_bladder"}
    spec = load_decathlon(_folder(tmp_path, labels))
    assert spec.labels == {0: "background", 1: "liver", 2: "inferior vena cava", 3: "duodenum",
                           4: "prostate/uterus", 5: "urinary bladder"}
    assert spec.label_names[2] == "postcava"


def test_nnunet_v2_inverted_labels_and_mr_modality(tmp_path):
    spec = load_decathlon(_folder(tmp_path, {"background": 0, "kidney_right": 1},
                                  extra={"modality": {"0": "T2", "1": "ADC"}}))
    assert spec.labels == {0: "background", 1: "right kidney"}
    assert spec.modality == "MR" and spec.channels == ["T2", "ADC"] and spec.in_channels == 2


def test_label_subset_is_fixed_and_nonempty():
    cases = [{"name": str(i)} for i in range(20)]
    a, b = label_subset(cases, 0.25, seed=3), label_subset(cases, 0.25, seed=3)
    assert a == b and len(a) == 5
    assert [c["name"] for c in a] == sorted((c["name"] for c in a), key=int)
    assert len(label_subset(cases[:2], 0.1)) == 1
    with pytest.raises(MosmosError, match="label ratio"):
        label_subset(cases, 0)


@pytest.mark.parametrize("mutate, message", [
    (lambda root: (root / "dataset.json").unlink(), "no dataset.json or dataset_0.json"),
    (lambda root: (root / "dataset.json").write_text("{\"labels\": "), "dataset.json: malformed JSON"),
    (lambda root: (root / "dataset.json").write_text("{\"training\": []}"), "dataset.json: missing key 'labels'"),
    (lambda root: (root / "dataset.json").write_text("{\"labels\": {\"0\": \"background\"}}"),
     "dataset.json: missing key 'training'"),
    (lambda root: (root / "labelsTr/label0001.nii.gz").unlink(), "validation case img0001: label file .*label0001"),
    (lambda root: (root / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "liver", "2": "hepatic"}, "training": []})), "same organ 'liver'"),
    (lambda root: (root / "dataset.json").write_text(json.dumps({"labels": {"1": "liver"}, "training": []})),
     "no value 0"),
])
def test_bad_dataset_folders(tmp_path, mutate, message):
    root = _folder(tmp_path, {"0": "background", "1": "liver"})
    mutate(root)
    with pytest.raises(MosmosError, match=message):
        load_decathlon(root)


def test_bad_cases_are_named(tmp_path):
    root = _folder(tmp_path, {"0": "background", "1": "liver"})
    spec = load_decathlon(root)
    case = spec.training[0]
    assert check_case(case, spec.labels)["values"] == [0]

    _nifti(case["label"], np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(MosmosError, match=r"case img0000: label .* shape \(8, 8, 5\) differs"):
        check_case(case, spec.labels)

    _nifti(case["label"], np.zeros((8, 8, 4), np.uint8), spacing=(1.5, 1.5, 3.0))
    with pytest.raises(MosmosError, match="case img0000: .*different grids"):
        check_case(case, spec.labels)

    bad = np.zeros((8, 8, 4), np.uint8)
    bad[0, 0, 0], bad[1, 1, 1] = 3, 7
    _nifti(case["label"], bad)
    with pytest.raises(MosmosError, match=r"case img0000: .*values \[3, 7\] not defined"):
        check_case(case, spec.labels)

    _nifti(case["image"], np.zeros((8, 8), np.int16))
    with pytest.raises(MosmosError, match="case img0000: .*is 2D .* the model is 3D"):
        check_case(case, spec.labels)

    case["image"].write_bytes(b"not a nifti")
    with pytest.raises(MosmosError, match="case img0000: cannot read image"):
        check_case(case, spec.labels)


def test_train_and_val_pipelines(phantom_dir):
    spec = load_decathlon(phantom_dir)
    cfg = preprocessing_config(roi_size=32, num_samples=2, label_values=spec.label_values)
    torch.manual_seed(0)
    crops = build_train_transforms(cfg)(spec.training[0])
    assert len(crops) == 2
    img, lab = crops[0]["image"], crops[0]["label"]
    assert img.shape == (1, 32, 32, 32) and lab.shape == (1, 32, 32, 32)
    assert 0 <= float(lab.min()) and float(lab.max()) < spec.num_classes  # gaps remapped to 0..K
    whole = build_val_transforms(cfg)(spec.validation[0])
    assert whole["image"].min() >= 0 and whole["image"].max() <= 1
    assert whole["image"].shape == whole["label"].shape

    slices = build_train_transforms(dict(cfg, spatial_dims=2, roi_size=[32, 32], num_samples=3))(spec.training[0])
    assert len(slices) == 3 and slices[0]["image"].shape == (1, 32, 32) and slices[0]["label"].shape == (1, 32, 32)


def test_augmentation_keeps_the_patient_left_and_right_organs_apart(phantom_dir):
    """Flips and quarter turns (certain here) never move the left-right axis (RAS axis 0) unless asked to: a
    right kidney stays on the patient's right of a left kidney, so lateral tags keep meaning what they say."""
    spec = load_decathlon(phantom_dir)
    right, left = (spec.label_values.index(v) for v in (2, 3))  # network classes of the two kidneys

    def left_of_right(flip_axes) -> set[bool]:
        cfg = preprocessing_config(roi_size=32, num_samples=4, label_values=spec.label_values, flip_prob=1.0,
                                   rot90_prob=1.0, flip_axes=flip_axes)
        out = set()
        for seed in range(4):
            pipeline = build_train_transforms(cfg)
            pipeline.set_random_state(seed=seed)
            for crop in pipeline(spec.training[0]):
                label = np.asarray(crop["label"])[0]
                xs = {c: np.nonzero(label == c)[0].mean() for c in (right, left) if (label == c).any()}
                if len(xs) == 2:
                    out.add(bool(xs[left] > xs[right]))
        return out

    assert preprocessing_config()["flip_axes"] == []  # the default recipe: no flips, no quarter turns
    assert left_of_right([1, 2]) == {True}
    assert left_of_right([0, 1, 2]) == {False}  # what a left-right flip does to lateral labels


def test_zoom_augmentation_resizes_the_organs_of_each_crop_and_keeps_its_labels(phantom_dir):
    """scale_range (the maps recipe's 0.1) zooms the crops about their centres: the same crops hold organs
    of other sizes, and the labels stay whole classes (nearest-neighbour). Off by default."""
    spec = load_decathlon(phantom_dir)

    def organ_voxels(scale_range: float) -> np.ndarray:
        cfg = preprocessing_config(roi_size=32, num_samples=4, label_values=spec.label_values, shift_prob=0.0,
                                   scale_range=scale_range)
        pipeline = build_train_transforms(cfg)
        pipeline.set_random_state(seed=0)
        crops = pipeline(spec.training[0])
        assert all(np.shape(c["image"]) == np.shape(c["label"]) == (1, 32, 32, 32) for c in crops)
        labels = [np.asarray(c["label"]).astype(int) for c in crops]
        assert all(np.array_equal(lab, np.asarray(c["label"])) for lab, c in zip(labels, crops))
        return np.array([np.bincount(lab.ravel(), minlength=len(spec.label_values)) for lab in labels])

    assert preprocessing_config()["scale_range"] == 0.0
    plain, zoomed = organ_voxels(0.0), organ_voxels(0.1)
    assert plain.shape == zoomed.shape  # no label value outside the classes appeared
    changed = np.abs(zoomed[:, 1:] - plain[:, 1:]) > 0.05 * np.maximum(plain[:, 1:], 20)
    assert changed.sum() >= 4  # organs of other sizes in the same crops


def test_mr_percentile_normalisation(phantom_dir):
    spec = load_decathlon(phantom_dir)
    out = build_val_transforms(dict(modality="MR"), with_label=False)({"image": spec.training[0]["image"]})
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) == 1.0


def test_bad_preprocessing_config():
    with pytest.raises(MosmosError, match="roi size"):
        preprocessing_config(roi_size=[96, 96])
    with pytest.raises(MosmosError, match="spacing"):
        preprocessing_config(spacing=[1, 2])


def test_building_the_pipelines_prints_no_reader_noise(capfd, caplog, recwarn):
    """monai's DICOM reader complains about its optional GPU decoder whenever a loader is built;
    the NIfTI-only pipelines must not show that to users (it appeared in every demo run)."""
    build_train_transforms(preprocessing_config())
    build_val_transforms(preprocessing_config())
    out, err = capfd.readouterr()
    assert "nvImageCodec" not in out + err + caplog.text
    assert not [w for w in recwarn if "NvImgCodec" in str(w.message)]
