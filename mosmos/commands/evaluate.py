"""`mosmos evaluate`: per-organ Dice and HD95 of a segmentation model on a dataset split, with the Dice of
its pixel–tag maps alone beside them, and a paired significance test between two result files."""

from __future__ import annotations

import math
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
    from ..files.outputs import check_output, check_output_folder
    from ..options import check_number

    check_number("overlap", args.overlap)
    out = Path(args.out) if args.out else Path(args.model).parent / f"eval_{args.split}"
    inputs = (args.model, args.data)
    check_output_folder(out, inputs)
    check_output(out / CSV_NAME, "metrics table", inputs)
    check_output(out / MD_NAME, "metrics table", inputs)
    from ..evaluation.evaluate import evaluate

    results = evaluate(args.model, args.data, args.split, args.device, args.overlap)

    from ..evaluation.metrics import markdown_table, write_tables

    out.mkdir(parents=True, exist_ok=True)
    write_tables(results, out / CSV_NAME, out / MD_NAME)
    print(markdown_table(results), end="")
    print(f"results: {out / CSV_NAME}, {out / MD_NAME}")
    return 0


def compare(a: str, b: str) -> int:
    from ..evaluation.metrics import case_mean_dice, read_results_csv, wilcoxon_p

    ra, rb = read_results_csv(a), read_results_csv(b)
    p, n = wilcoxon_p(ra, rb)
    means = []
    for res in (ra, rb):
        vals = [v for v in case_mean_dice(res).values() if not math.isnan(v)]
        means.append(sum(vals) / len(vals) if vals else float("nan"))
    print(f"{a}: mean Dice {means[0]:.4f}; {b}: mean Dice {means[1]:.4f}")
    print(f"Wilcoxon signed-rank p = {p:.4g} (two-sided, {n} cases paired, per-case mean Dice)")
    return 0
