"""Standard (SNOMED CT) terminology for segments, serialised the way Slicer's Terminologies module
stores it in a segment (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry)."""

from __future__ import annotations

import csv
import functools
import os

# A context that ships with Slicer and holds these anatomical structures.
CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_DATA = os.path.join(os.path.dirname(__file__), "terminology.csv")


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, str]]:
    with open(_DATA, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {row["tag"]: row for row in rows}


def _code(row, prefix) -> str:
    return f"{row[prefix + '_scheme']}^{row[prefix + '_code']}^{row[prefix + '_meaning']}"


def terminology_entry(tag: str) -> str | None:
    """Serialised terminology entry for a canonical tag, None for tags without a standard code."""
    row = _table().get(tag)
    if row is None:
        return None
    return "~".join([CONTEXT, _code(row, "category"), _code(row, "type"), _code(row, "modifier"),
                     ANATOMIC_CONTEXT, "^^", "^^"])


def known_tags() -> list[str]:
    return list(_table())
