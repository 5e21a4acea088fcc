"""SNOMED CT codes of the organ tags (segmented property category, type and laterality modifier), as DICOM
segment descriptions and Slicer's terminology entries both need them."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import NamedTuple

_DATA = Path(__file__).with_name("terminology.csv")


class Code(NamedTuple):
    scheme: str      # coding scheme designator, "SCT" = SNOMED CT
    value: str
    meaning: str


class OrganCodes(NamedTuple):
    category: Code
    type: Code
    modifier: Code | None   # laterality (Right / Left), None when the type has none


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, str]]:
    with open(_DATA, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {row["tag"]: row for row in rows}


def _code(row, prefix) -> Code | None:
    if not row[prefix + "_code"]:
        return None
    return Code(row[prefix + "_scheme"], row[prefix + "_code"], row[prefix + "_meaning"])


def organ_codes(tag: str) -> OrganCodes | None:
    """The codes of a canonical tag, None for tags without a standard code."""
    row = _table().get(tag)
    if row is None:
        return None
    return OrganCodes(_code(row, "category"), _code(row, "type"), _code(row, "modifier"))

