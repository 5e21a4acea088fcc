"""MONAI pre-processing for fine-tuning, following UNETR's BTCV recipe (docs/method.md).

RAS orientation, resampling to 1.5 x 1.5 x 2.0 mm, CT window -175..250 HU -> [0, 1] (MR:
per-volume 0.5..99.5 percentiles -> [0, 1]), foreground crop, random label-balanced crops, flips,
90° rotations and intensity shifts; optionally random zooms ("scale_range", off by default). The 2D variant (MOSMOS-U-Net) resamples in-plane only and
draws random axial slices from the same 3D volumes.

Label maps whose values have gaps (a dataset without some organ) are remapped to classes
0..K when cfg["label_values"] lists the values (``DatasetSpec.label_values``).

``cfg`` is a plain dict (``preprocessing_config()`` fills the defaults) that goes into the model
file header as "preprocessing", so inference normalises exactly as training did.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

from monai import transforms as mt

from ..errors import MosmosError

DEFAULTS = {
    "spatial_dims": 3,
    "modality": "CT",
    "spacing": [1.5, 1.5, 2.0],
    "roi_size": [96, 96, 96],
    "a_min": -175.0,
    "a_max": 250.0,
    "b_min": 0.0,
    "b_max": 1.0,
    "lower_percentile": 0.5,
    "upper_percentile": 99.5,
    "num_samples": 4,
    "pos": 1.0,
    "neg": 1.0,
    "flip_prob": 0.1,
    # Axes that flips and 90° rotations may move. Axis 0 (RAS: the patient's left-right) is left out:
    # a left-right flip swaps the left and right organs without swapping their labels ("left kidney").
    "flip_axes": [],
    "rot90_prob": 0.1,
    "shift_offset": 0.1,
    "shift_prob": 0.5,
    # Random zoom of each crop about its centre by a factor in 1 -/+ scale_range (0: none): subjects differ
    # in size, and their organs fall on different tokens of the encoder's grid (the maps recipe uses 0.1).
    "scale_range": 0.0,
    "scale_prob": 1.0,
    "label_values": None,
}


def preprocessing_config(cfg: dict | None = None, **overrides) -> dict:
    """Defaults + ``cfg`` + ``overrides``, checked; JSON-serialisable."""
    out = dict(DEFAULTS)
    out.update(cfg or {})
    out.update(overrides)
    dims = int(out["spatial_dims"])
    if dims not in (2, 3):
        raise MosmosError(f"spatial_dims {dims}: must be 2 or 3")
    out["spatial_dims"] = dims
    out["modality"] = "CT" if str(out["modality"]).upper() == "CT" else "MR"
    out["spacing"] = _triple(out["spacing"], "spacing", float)
    roi = out["roi_size"]
    roi = [int(roi)] * dims if isinstance(roi, (int, float)) else [int(r) for r in roi]
    if len(roi) != dims or min(roi) < 1:
        raise MosmosError(f"roi size {roi}: needs {dims} positive sizes")
    out["roi_size"] = roi
    if out["label_values"] is not None:
        values = [int(v) for v in out["label_values"]]
        if values[:1] != [0] or sorted(set(values)) != values:
            raise MosmosError(f"label values {values}: must be increasing and start with 0 (background)")
        out["label_values"] = values
    if out["a_max"] <= out["a_min"]:
        raise MosmosError(f"intensity window {out['a_min']}..{out['a_max']}: a_max must exceed a_min")
    return out


def _triple(value, what, cast) -> list:
    vals = [cast(value)] * 3 if isinstance(value, (int, float)) else [cast(v) for v in value]
    if len(vals) != 3:
        raise MosmosError(f"{what} {value}: needs 3 values")
    return vals


def intensity_transform(cfg: dict, keys: Sequence[str] = ("image",)) -> mt.MapTransform:
    """CT: fixed HU window to [b_min, b_max], clipped; MR: per-volume, per-channel percentiles."""
    if cfg["modality"] == "CT":
        return mt.ScaleIntensityRanged(keys=list(keys), a_min=cfg["a_min"], a_max=cfg["a_max"],
                                       b_min=cfg["b_min"], b_max=cfg["b_max"], clip=True)
    return mt.ScaleIntensityRangePercentilesd(keys=list(keys), lower=cfg["lower_percentile"],
                                              upper=cfg["upper_percentile"], b_min=cfg["b_min"],
                                              b_max=cfg["b_max"], clip=True, channel_wise=True)


def _spacing(cfg: dict) -> list[float]:
    # 2D models see axial slices at their original slice spacing; non-positive pixdim keeps it.
    return cfg["spacing"] if cfg["spatial_dims"] == 3 else cfg["spacing"][:2] + [-1.0]


def _nifti_loader(keys: list[str]) -> mt.LoadImaged:
    # LoadImaged builds every monai reader, and the DICOM one logs and warns that the optional
    # nvImageCodec GPU decoder is missing; this loader reads NIfTI only, so that noise would mislead.
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            return mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True)
    finally:
        plugin_log.setLevel(level)


def _load_and_resample(cfg: dict, keys: list[str]) -> list:
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    steps = [
        _nifti_loader(keys),
        mt.EnsureChannelFirstd(keys=keys),
        mt.Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=keys, pixdim=_spacing(cfg), mode=modes),
        intensity_transform(cfg),
        mt.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
    ]
    values = cfg["label_values"]
    if "label" in keys and values is not None and values != list(range(len(values))):
        steps.append(mt.MapLabelValued(keys="label", orig_labels=values, target_labels=list(range(len(values)))))
    return steps


def build_train_transforms(cfg: dict | None = None) -> mt.Compose:
    """Random training crops from {"image": path, "label": path} cases.

    3D: ``num_samples`` crops of ``roi_size`` per volume, half centred on foreground. 2D: the same
    on (H, W, 1) crops, squeezed to (C, H, W) axial slices.
    """
    cfg = preprocessing_config(cfg)
    keys = ["image", "label"]
    dims = cfg["spatial_dims"]
    crop = cfg["roi_size"] + ([1] if dims == 2 else [])
    steps = _load_and_resample(cfg, keys) + [
        # Volumes smaller than the crop (small phantoms, thin slabs) are padded rather than rejected.
        mt.SpatialPadd(keys=keys, spatial_size=crop),
        mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=crop, pos=cfg["pos"], neg=cfg["neg"],
                                  num_samples=int(cfg["num_samples"]), image_key="image", image_threshold=0),
    ]
    if dims == 2:
        steps.append(mt.SqueezeDimd(keys=keys, dim=3))
    if cfg["scale_range"] > 0:
        steps.append(mt.RandAffined(keys=keys, prob=cfg["scale_prob"], scale_range=[cfg["scale_range"]] * dims,
                                    mode=("bilinear", "nearest"), padding_mode="zeros"))
    axes = [a for a in cfg["flip_axes"] if a < dims]
    steps += [mt.RandFlipd(keys=keys, prob=cfg["flip_prob"], spatial_axis=axis) for axis in axes]
    if len(axes) == 2 and crop[axes[0]] == crop[axes[1]]:  # a quarter turn within the plane of two movable axes
        steps.append(mt.RandRotate90d(keys=keys, prob=cfg["rot90_prob"], max_k=3, spatial_axes=tuple(axes)))
    steps += [
        mt.RandShiftIntensityd(keys=["image"], offsets=cfg["shift_offset"], prob=cfg["shift_prob"]),
        mt.EnsureTyped(keys=keys, track_meta=False),
    ]
    return mt.Compose(steps)


def build_val_transforms(cfg: dict | None = None, with_label: bool = True) -> mt.Compose:
    """Whole pre-processed volumes (no randomness), for sliding-window validation.

    The 2D variant also returns whole volumes (resampled in-plane only); the caller runs the 2D
    model slice by slice over the last axis.
    """
    cfg = preprocessing_config(cfg)
    keys = ["image", "label"] if with_label else ["image"]
    return mt.Compose(_load_and_resample(cfg, keys))
