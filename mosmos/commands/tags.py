"""`mosmos tags "TEXT"`: the pre-training organ tags a report names, as a JSON list."""

from __future__ import annotations

import json
import sys

from ..tags import extract_tags

HELP = "print the organ tags named in a report text as a JSON list ('-' reads the text from stdin)"


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="+", help="report or caption text (several words are joined)")


def run(args) -> int:
    text = " ".join(args.text)
    if text == "-":
        text = sys.stdin.read()
    print(json.dumps(extract_tags(text)))
    return 0
