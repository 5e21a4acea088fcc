"""Segmentation datasets in the Medical Segmentation Decathlon layout (docs/training/index.md).

A folder holds ``dataset.json`` (or BTCV's ``dataset_0.json``) with ``labels`` ({"0": "background",
"1": "spleen", ...}), ``training`` and optionally ``validation`` and ``test`` lists; paths are
relative to the folder. Label names are mapped to canonical tags (BTCV "rkid", AMOS "postcava",
TotalSegmentator "kidney_right", ...); names the tag vocabulary does not know are kept as open-set
tags. ``validation`` is optional because the official Decathlon tasks ship without one.

A case is a dict ``{"image": Path, "label": Path | None, "name": str}``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from ..tags import normalize_tag

JSON_NAMES = ("dataset.json", "dataset_0.json")
BACKGROUND = "background"
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class DatasetSpec:
    root: Path
    json_path: Path
    labels: dict[int, str]  # label value -> tag; 0 -> "background"; values may have gaps
    label_names: dict[int, str]  # label value -> name as written in the JSON
    modality: str  # "CT" or "MR"
    channels: list[str]  # input channel names, e.g. ["FLAIR", "T1w", "t1gd", "T2w"]
    training: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    name: str = ""

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return len(self.labels)

    @property
    def label_values(self) -> list[int]:
        """Label value of each network class (class i <-> label_values[i]); equals 0..K unless the
        dataset's values have gaps, in which case the transforms remap them (cfg "label_values")."""
        return sorted(self.labels)

    @property
    def tags(self) -> list[str]:
        """Foreground tags in label order 1..K."""
        return [self.labels[v] for v in sorted(self.labels) if v != 0]

    @property
    def in_channels(self) -> int:
        return max(1, len(self.channels))


def find_dataset_json(root: str | Path) -> Path:
    root = Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        raise MosmosError(f"{root}: dataset folder does not exist")
    for name in JSON_NAMES:
        if (root / name).is_file():
            return root / name
    raise MosmosError(f"{root}: no {' or '.join(JSON_NAMES)} in the dataset folder")


def label_tag(name: str) -> str:
    """Canonical tag of a dataset label name; unknown names become open-set tags (cleaned name)."""
    tag = normalize_tag(name)
    if tag is not None:
        return tag
    return " ".join(str(name).replace("_", " ").split()).lower()


def _parse_labels(raw, path: Path) -> tuple[dict[int, str], dict[int, str]]:
    if not isinstance(raw, dict) or not raw:
        raise MosmosError(f"{path}: 'labels' must be a non-empty object such as "
                          '{"0": "background", "1": "liver"}')
    pairs = list(raw.items())
    # nnU-Net v2 writes the mapping the other way round: {"background": 0, "liver": 1}.
    if all(isinstance(v, int) for _, v in pairs) and not all(str(k).strip().isdigit() for k, _ in pairs):
        pairs = [(v, k) for k, v in pairs]
    names: dict[int, str] = {}
    for key, name in pairs:
        try:
            value = int(str(key).strip())
        except ValueError:
            raise MosmosError(f"{path}: label value {key!r} is not an integer") from None
        if value < 0 or not isinstance(name, str) or not name.strip():
            raise MosmosError(f"{path}: label {key!r}: needs a value >= 0 and a name, got {name!r}")
        names[value] = name.strip()
    if 0 not in names:
        raise MosmosError(f"{path}: 'labels' has no value 0 (background)")
    tags = {0: BACKGROUND}
    seen: dict[str, int] = {}
    for value in sorted(names):
        if value == 0:
            continue
        tag = label_tag(names[value])
        if tag in seen:
            raise MosmosError(f"{path}: labels {seen[tag]} ({names[seen[tag]]!r}) and {value} ({names[value]!r}) "
                              f"are the same organ '{tag}'")
        seen[tag] = value
        tags[value] = tag
    return tags, names


def _parse_modality(data: dict) -> tuple[str, list[str]]:
    raw = data.get("modality", data.get("channel_names"))
    if raw is None:
        return "CT", []
    if isinstance(raw, str):
        channels = [raw]
    elif isinstance(raw, dict):
        channels = [str(raw[k]) for k in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else 0)]
    else:
        channels = [str(c) for c in raw]
    modality = "CT" if channels and all(c.strip().upper() == "CT" for c in channels) else "MR"
    return modality, channels


def _case_name(path: str) -> str:
    name = Path(path).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _parse_cases(data: dict, key: str, root: Path, path: Path, need_label: bool) -> list[dict]:
    entries = data.get(key, [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise MosmosError(f"{path}: '{key}' must be a list")
    cases = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), (str, list)):
            raise MosmosError(f"{path}: {key}[{i}] needs an 'image' path")
        image = entry["image"]
        if isinstance(image, list):  # some multi-modal datasets list one file per channel
            if len(image) != 1:
                raise MosmosError(f"{path}: {key}[{i}]: one image file per case is supported, got {len(image)}")
            image = image[0]
        label = entry.get("label")
        if need_label and not isinstance(label, str):
            raise MosmosError(f"{path}: {key}[{i}] ({image}) needs a 'label' path")
        case = {"image": root / image, "label": root / label if isinstance(label, str) else None,
                "name": _case_name(image)}
        for role in ("image", "label"):
            if case[role] is not None and not case[role].is_file():
                raise MosmosError(f"{path}: {key} case {case['name']}: {role} file {case[role]} does not exist")
        cases.append(case)
    return cases


def load_decathlon(root: str | Path) -> DatasetSpec:
    """Read a Decathlon-layout dataset folder (or its JSON file directly)."""
    path = find_dataset_json(root)
    root = path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise MosmosError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise MosmosError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise MosmosError(f"{path}: expected a JSON object")
    for key in ("labels", "training"):
        if key not in data:
            raise MosmosError(f"{path}: missing key '{key}'")
    labels, names = _parse_labels(data["labels"], path)
    modality, channels = _parse_modality(data)
    spec = DatasetSpec(
        root=root, json_path=path, labels=labels, label_names=names, modality=modality, channels=channels,
        training=_parse_cases(data, "training", root, path, need_label=True),
        validation=_parse_cases(data, "validation", root, path, need_label=True),
        test=_parse_cases(data, "test", root, path, need_label=False),
        name=str(data.get("name", root.name)),
    )
    if not spec.training:
        raise MosmosError(f"{path}: 'training' lists no cases")
    return spec


def label_subset(cases: list[dict], ratio: float, seed: int = 0) -> list[dict]:
    """A fixed random subset of ``ratio`` of the cases (at least one), in the original order."""
    if not 0 < ratio <= 1:
        raise MosmosError(f"label ratio {ratio}: must be in (0, 1]")
    if not cases:
        return []
    n = max(1, int(round(ratio * len(cases))))
    keep = sorted(random.Random(seed).sample(range(len(cases)), n))
    return [cases[i] for i in keep]


def _load(path: Path, case: str, role: str):
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return img, img.shape
    except Exception as e:  # nibabel raises many types for unreadable files
        raise MosmosError(f"case {case}: cannot read {role} {path} ({type(e).__name__}: {e})") from None


def check_case(case: dict, labels: dict[int, str], spatial_dims: int = 3, in_channels: int = 1) -> dict:
    """Check one case before training on it; returns {"shape", "spacing", "values"}.

    MosmosError (naming the case) when the image is 2D but the model is 3D, when image and label
    grids (shape or affine) differ, or when the label map holds values ``labels`` does not define.
    """
    name = case["name"]
    image, shape = _load(case["image"], name, "image")
    spatial = tuple(shape[:3]) if len(shape) >= 3 else tuple(shape)
    channels = shape[3] if len(shape) == 4 else 1
    if len(shape) > 4 or (len(shape) == 4 and channels != in_channels):
        raise MosmosError(f"case {name}: image {case['image']} has shape {shape}; expected {in_channels} channel(s)")
    if spatial_dims == 3 and (len(spatial) < 3 or min(spatial) == 1):
        raise MosmosError(f"case {name}: image {case['image']} is 2D (shape {shape}) but the model is 3D; "
                          f"use a 2D model for slices")
    info = {"shape": spatial, "spacing": tuple(float(z) for z in image.header.get_zooms()[: len(spatial)]),
            "values": []}
    if case.get("label") is None:
        return info
    label, lshape = _load(case["label"], name, "label")
    if tuple(lshape) != spatial:
        raise MosmosError(f"case {name}: label {case['label']} shape {tuple(lshape)} "
                          f"differs from image shape {spatial}")
    if not np.allclose(label.affine, image.affine, rtol=1e-4, atol=1e-2):
        raise MosmosError(f"case {name}: label {case['label']} and image are on different grids "
                          f"(affines differ: {np.round(label.affine, 3).tolist()} "
                          f"vs {np.round(image.affine, 3).tolist()})")
    data = np.asanyarray(label.dataobj)
    values = np.unique(data)
    if not np.allclose(values, np.round(values)):
        raise MosmosError(f"case {name}: label {case['label']} holds non-integer values")
    values = [int(v) for v in np.round(values)]
    unknown = [v for v in values if v not in labels]
    if unknown:
        raise MosmosError(f"case {name}: label {case['label']} holds values {unknown} not defined in 'labels' "
                          f"(defined: {sorted(labels)})")
    info["values"] = values
    return info
