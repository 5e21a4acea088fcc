"""`mosmos evaluate`: per-organ Dice and HD95 of a segmentation model on a dataset split, with the Dice of
its pixel–tag maps alone beside them, and a paired significance test between two result files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..errors import MosmosError

HELP = ("evaluate a segmentation model on a Decathlon/BTCV-style dataset split (per-organ Dice, HD95 in mm, "
        "and the Dice of the pixel–tag maps' own argmax), "
        "or compare two result CSVs (Wilcoxon signed-rank test)")
SPLITS = ("validation", "test", "training")
CSV_NAME, MD_NAME = "metrics.csv", "metrics.md"


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="MOSMOS segmentation model file")
    parser.add_argument("--data", help="dataset folder with dataset.json (or BTCV's dataset_0.json)")
    parser.add_argument("--split", choices=SPLITS, default="validation",
                        help="cases to evaluate; they need label maps (default %(default)s)")
    parser.add_argument("--out", metavar="DIR",
                        help=f"where {CSV_NAME} (per case and organ) and {MD_NAME} (summary) go "
                             "(default: eval_<split> beside the model file)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--compare", nargs=2, metavar=("A.csv", "B.csv"),
                        help="instead of evaluating: Wilcoxon signed-rank p-value of per-case mean Dice, "
                             "paired by case, between two result files of this command")


def run(args) -> int:
    if args.compare:
        return compare(*args.compare)
    if not args.model or not args.data:
        raise MosmosError("--model and --data are required (or --compare A.csv B.csv)")
    from ..outputs import check_output, check_output_folder
    from ..train.config import check_number

    check_number("overlap", args.overlap)
    out = Path(args.out) if args.out else Path(args.model).parent / f"eval_{args.split}"
    inputs = (args.model, args.data)
    check_output_folder(out, inputs)
    check_output(out / CSV_NAME, "metrics table", inputs)
    check_output(out / MD_NAME, "metrics table", inputs)
    results = evaluate(args.model, args.data, args.split, args.device, args.overlap)

    from ..metrics import markdown_table, write_tables

    out.mkdir(parents=True, exist_ok=True)
    write_tables(results, out / CSV_NAME, out / MD_NAME)
    print(markdown_table(results), end="")
    print(f"results: {out / CSV_NAME}, {out / MD_NAME}")
    return 0


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
             overlap: float = 0.5) -> dict:
    """{case: {organ: {"dice", "hd95", "map_dice"}}} of ``model`` on the labelled cases of ``split``; each
    case is segmented on its own grid and scored with its own voxel spacing. map_dice scores the pixel–tag
    maps' own label map (argmax of the up-sampled maps over the model's classes, background included)."""
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
                                source=f"case {name}", map_labels=True)
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

    from ..metrics import MAP_DICE, binary_dice, organ_metrics, spacing_from_affine

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


def compare(a: str, b: str) -> int:
    from ..metrics import case_mean_dice, read_results_csv, wilcoxon_p

    ra, rb = read_results_csv(a), read_results_csv(b)
    p, n = wilcoxon_p(ra, rb)
    means = []
    for res in (ra, rb):
        vals = [v for v in case_mean_dice(res).values() if not math.isnan(v)]
        means.append(sum(vals) / len(vals) if vals else float("nan"))
    print(f"{a}: mean Dice {means[0]:.4f}; {b}: mean Dice {means[1]:.4f}")
    print(f"Wilcoxon signed-rank p = {p:.4g} (two-sided, {n} cases paired, per-case mean Dice)")
    return 0
