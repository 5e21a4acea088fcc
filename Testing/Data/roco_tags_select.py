"""Choose the captions of roco_tags_blind.tsv and split them, once, with fixed seeds.

Run from the repository root: python Testing/Data/roco_tags_select.py > roco_tags_blind.tsv
It writes roco_id, caption, an empty tags column (filled in by hand, see
roco_tags_labelling_rules.md) and the split. Captions already in roco_tags_sample.tsv are left out.
The topic words are a broad net of organ, abdominal and cardiac words, independent of mosmos.tags,
so that positives, brain ventricles, echo views and routes (the hard cases) are all likely; a random
share of the other captions brings negatives.
"""

import csv
import random
import re
import sys
from pathlib import Path

DATA = Path(__file__).parent
CAPTIONS = DATA / "roco_captions_ccby" / "validation" / "radiology" / "captions.txt"
TOPIC = re.compile(r"liver|hepat|kidney|renal|nephr|spleen|splen|gall|cholecyst|o?esophag|stomach|gastr"
                   r"|pancrea|adrenal|aort|cava|\bivc\b|portal|heart|cardi|\batri|ventric|myocard"
                   r"|pulmonary arter|abdom", re.I)
N_TOPIC, N_OTHER, SEED = 250, 70, 15


def select() -> list[tuple[str, str, str]]:
    """(roco_id, caption, split) of the chosen captions, in ROCO id order."""
    with (DATA / "roco_tags_sample.tsv").open(encoding="utf-8") as f:
        seen = {row["roco_id"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    rows = []
    for line in CAPTIONS.read_text(encoding="utf-8").splitlines():
        roco_id, caption = line.split("\t", 1)
        if roco_id not in seen:
            rows.append((roco_id, " ".join(caption.split())))
    topic = [r for r in rows if TOPIC.search(r[1])]
    other = [r for r in rows if not TOPIC.search(r[1])]
    rng = random.Random(SEED)
    chosen = rng.sample(topic, N_TOPIC) + rng.sample(other, N_OTHER)
    # One split, drawn now, before any label or rule exists: half development, half test.
    order = list(range(len(chosen)))
    rng.shuffle(order)
    split = {i: ("dev" if k < len(chosen) // 2 else "test") for k, i in enumerate(order)}
    by_id = sorted(enumerate(chosen), key=lambda e: e[1][0])
    return [(roco_id, caption, split[i]) for i, (roco_id, caption) in by_id]


def main() -> None:
    out = csv.writer(sys.stdout, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
    out.writerow(["roco_id", "caption", "tags", "split"])
    for roco_id, caption, split in select():
        out.writerow([roco_id, caption, "", split])


if __name__ == "__main__":
    main()
