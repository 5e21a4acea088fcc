"""`mosmos tags "TEXT"`: the pre-training organ tags a report names, as a JSON list."""

from __future__ import annotations

import json
import sys

from ..errors import MosmosError
from ..tags import extract_tags

HELP = "print the organ tags named in a report text as a JSON list ('-' reads the text from stdin)"


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="+", help="report or caption text (several words are joined)")


def run(args) -> int:
    text = " ".join(args.text)
    if text == "-":
        data = sys.stdin.buffer.read()  # bytes: the terminal's encoding may not be UTF-8, reports are
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MosmosError(f"stdin: not UTF-8 text (byte {data[e.start]:#04x} at position {e.start})") from None
    print(json.dumps(extract_tags(text)))
    return 0
