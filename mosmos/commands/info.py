"""`mosmos info FILE`: a model file's card, from its header alone (a few kB read, however large the file)."""

from __future__ import annotations

import json

HELP = "show a model file's card (organs, data, validation Dice, provenance) from its header"


def add_arguments(p) -> None:
    p.add_argument("file", help="a MOSMOS model file")
    p.add_argument("--json", action="store_true", help="the whole header as JSON")


def run(args) -> int:
    from ..files.model_store import model_info

    info = model_info(args.file)
    if args.json:
        print(json.dumps({"file": str(info.path), "size": info.size, "header": info.header}, indent=2))
    else:
        print(f"{info.path} ({info.size / 1e6:.1f} MB)")
        print(info.card_text())
    return 0
