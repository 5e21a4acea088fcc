"""A segmentation model on a labelled dataset split: per case and organ, Dice and HD95 of the segmentation and
the Dice of the pixel–tag maps' own label map (what `mosmos evaluate` and the pre-training study report)."""

from __future__ import annotations

import math
import sys

from ..errors import MosmosError


def organ_pairs(model_labels: dict[int, str], dataset_labels: dict[int, str]) -> list[tuple[str, int, int]]:
    """(organ, model label value, dataset label value) for the organs both label, in the model's
    order; both sides are matched by canonical tag, since their label values may differ."""
    from ..data.decathlon import label_tag

    by_tag = {label_tag(name): value for value, name in dataset_labels.items() if value != 0}
    pairs = []
    for value, name in sorted(model_labels.items()):
        tag = label_tag(name)
        if value != 0 and tag in by_tag:
            pairs.append((tag, value, by_tag[tag]))
    return pairs


def evaluate(model: str, data: str, split: str = "validation", device: str = "auto",
             overlap: float = 0.5, compile: str = "auto", precision: str = "auto") -> dict:
    """{case: {organ: {"dice", "hd95", "map_dice"}}} of ``model`` on the labelled cases of ``split``; each
    case is segmented on its own grid and scored with its own voxel spacing. map_dice scores the pixel–tag
    maps' own label map (argmax of the up-sampled maps over the model's classes, background included).
    ``compile``, ``precision``: as Segmenter.segment's."""
    from ..data.decathlon import check_case, load_decathlon
    from ..inference import Segmenter
    from ..inference.io import read_volume

    spec = load_decathlon(data)
    cases = getattr(spec, split)
    if not cases:
        raise MosmosError(f"{spec.json_path}: no '{split}' cases (choose another --split)")
    unlabelled = [c["name"] for c in cases if c.get("label") is None]
    if unlabelled:
        raise MosmosError(f"{spec.json_path}: {split} case {unlabelled[0]} has no label map to compare with")
    segmenter = Segmenter(model, device=device)
    model_labels = dict(zip(segmenter.label_values, segmenter.label_names))
    pairs = organ_pairs(model_labels, spec.labels)
    if not pairs:
        raise MosmosError(f"{model}: labels none of the organs of {spec.json_path} "
                          f"(model: {', '.join(segmenter.organ_names)}; dataset: {', '.join(spec.tags)})")
    missing = [t for t in spec.tags if t not in {p[0] for p in pairs}]
    if missing:
        print(f"mosmos evaluate: warning: the model does not label {', '.join(missing)}; not evaluated",
              file=sys.stderr)

    results = {}
    for case in cases:
        name = case["name"]
        check_case(case, spec.labels, spatial_dims=len(segmenter.roi_size), in_channels=spec.in_channels)
        volume = read_volume(case["image"])
        seg = segmenter.segment(volume.array, volume.affine, overlap=overlap, modality=spec.modality,
                                source=f"case {name}", map_labels=True, compile=compile,
                                precision=precision)
        results[name] = score_case(seg.labelmap, case["label"], pairs, seg.map_labelmap)
        means = []
        for key in ("dice", "map_dice"):
            vals = [m[key] for m in results[name].values() if not math.isnan(m.get(key, math.nan))]
            means.append(f"{sum(vals) / len(vals):.4f}" if vals else "undefined")
        print(f"case {name}: mean Dice {means[0]} (pixel–tag maps alone: {means[1]})", file=sys.stderr)
    return results


def score_case(labelmap, label_path, pairs: list[tuple[str, int, int]], map_labelmap=None) -> dict:
    """{organ: {"dice", "hd95"}} of a predicted label map (model label values) against the reference
    label file (dataset label values) on the same grid, with the reference's voxel spacing in mm; with
    ``map_labelmap`` (the pixel–tag maps' label map, same values and grid) also "map_dice"."""
    import nibabel as nib
    import numpy as np

    from .metrics import MAP_DICE, binary_dice, organ_metrics, spacing_from_affine

    ref_img = nib.load(str(label_path))
    ref = np.rint(np.asanyarray(ref_img.dataobj)).astype(np.int64)
    if ref.shape != labelmap.shape:
        raise MosmosError(f"{label_path}: shape {ref.shape} differs from the prediction's {labelmap.shape}")
    spacing = spacing_from_affine(ref_img.affine)
    out = {}
    for organ, model_value, data_value in pairs:
        truth = ref == data_value
        dice, hd95 = organ_metrics(labelmap == model_value, truth, spacing)
        out[organ] = {"dice": dice, "hd95": hd95}
        if map_labelmap is not None:
            out[organ][MAP_DICE] = binary_dice(map_labelmap == model_value, truth)
    return out
