"""Speed of report text -> organ tags (mosmos.tags.extract_tags) on every real ROCO caption at hand
(Testing/Data/roco_captions_ccby, 3,393 captions), on one core, as ratios measured in one process:

1. the tag pipeline (tokens -> organ mentions -> side, context and look-alike rules -> tags) against
   a plain ``re`` scan for the lexicon's organ words (one compiled alternation, no rules): the price
   of the rules;
2. the same against tokenisation alone: the share of the pipeline that is its first step.

Target: all captions in under 2 s, both on the first pass (the per-word lexicon cache empty) and
warm (best of --repeats).

    python benchmarks/bench_tags.py [--captions FILE] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from mosmos.tags import extract_tags, lexicon, report

CAPTIONS = Path(__file__).resolve().parents[1] / "Testing" / "Data" / "roco_captions_ccby" / "validation" / \
    "radiology" / "captions.txt"


def plain_scan():
    """Baseline: every organ term of the lexicon as one regular expression over the lower-case text."""
    words = [alt.replace(" ", r"\s+") for term in lexicon.ORGAN_TERMS if not term.cased
             for alt in term.words.split(" | ")]
    pattern = re.compile(r"\b(?:" + "|".join(words) + r")\b")
    return lambda text: [m.group() for m in pattern.finditer(text.lower())]


def seconds(fn, texts) -> float:
    t = time.perf_counter()
    for text in texts:
        fn(text)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=Path, default=CAPTIONS)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    texts = [line.split("\t", 1)[1] for line in args.captions.read_text(encoding="utf-8").splitlines()]

    report._entries_from.cache_clear()
    first = seconds(extract_tags, texts)
    warm = min(seconds(extract_tags, texts) for _ in range(args.repeats))
    scan = plain_scan()
    baseline = min(seconds(scan, texts) for _ in range(args.repeats))
    tokens = min(seconds(report.tokenize, texts) for _ in range(args.repeats))
    for name, base, value in (("pipeline / plain re scan", baseline, warm),
                              ("pipeline / tokenisation alone", tokens, warm)):
        print(json.dumps({"benchmark": "tags", "ratio": name, "value": round(value / base, 2),
                          "baseline_s": round(base, 3), "pipeline_s": round(value, 3)}))
    print(json.dumps({"benchmark": "tags", "captions": len(texts), "first_pass_s": round(first, 3),
                      "warm_s": round(warm, 3), "target_s": 2.0, "cpu": "1 core (pure Python)"}))


if __name__ == "__main__":
    main()
