"""`mosmos tags "TEXT"`: the pre-training organ tags a report names, as a JSON list;
with --explain, one line per tag with the words that gave it."""

from __future__ import annotations

import json
import sys

from ..errors import MosmosError
from ..tags import explain_tags, extract_tags

HELP = ("print the organ tags named in a report text as a JSON list ('-' reads the text from stdin); "
        "--explain prints each tag with the words that gave it")


def add_arguments(parser) -> None:
    parser.add_argument("text", nargs="+", help="report or caption text (several words are joined)")
    parser.add_argument("--explain", action="store_true",
                        help="one line per tag with the words that gave it, then the look-alikes left out")


def run(args) -> int:
    text = " ".join(args.text)
    if text == "-":
        data = sys.stdin.buffer.read()  # bytes: the terminal's encoding may not be UTF-8; reports are
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MosmosError(f"stdin: not UTF-8 text (byte {data[e.start]:#04x} at position {e.start})") from None
    if not args.explain:
        print(json.dumps(extract_tags(text)))
        return 0
    words: dict[str | None, list[str]] = {}
    for reason in explain_tags(text):
        quoted = json.dumps(reason.words, ensure_ascii=False) + (f" ({reason.note})" if reason.note else "")
        words.setdefault(reason.tag, []).append(quoted)
    for tag, quoted in words.items():
        print(f"{tag or 'not a tag'}: {', '.join(dict.fromkeys(quoted))}")
    return 0
