"""SNOMED CT codes of the organs MOSMOS segments (segmented property category, type and laterality modifier).

One source, the MOSMOS terminology context (mosmos/resources/SegmentationCategoryTypeModifier-MOSMOS.json, a Slicer
terminology JSON): DICOM SEG output reads its codes here, and the Slicer modules load the same file into
Slicer's terminologies logic so that its terminology selector resolves every segment."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

CONTEXT_FILE = str(Path(__file__).parents[1] / "resources" / "SegmentationCategoryTypeModifier-MOSMOS.json")


class Code(NamedTuple):
    scheme: str      # coding scheme designator, "SCT" = SNOMED CT
    value: str
    meaning: str


class OrganCodes(NamedTuple):
    category: Code
    type: Code
    modifier: Code | None   # laterality (Right / Left), None when the type has none


@functools.lru_cache(maxsize=1)
def _context() -> dict:
    with open(CONTEXT_FILE, encoding="utf-8") as f:
        return json.load(f)


def context_name() -> str:
    return _context()["SegmentationCategoryTypeContextName"]


def _code(coded: dict) -> Code:
    return Code(coded["CodingSchemeDesignator"], coded["CodeValue"], coded["CodeMeaning"])


@functools.lru_cache(maxsize=1)
def _entries() -> dict[str, OrganCodes]:
    """tag -> codes, from the 3dSlicerLabel of each type or type modifier."""
    found = {}
    for category in _context()["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            if "3dSlicerLabel" in type_:
                found[type_["3dSlicerLabel"]] = OrganCodes(_code(category), _code(type_), None)
            for modifier in type_.get("Modifier", []):
                found[modifier["3dSlicerLabel"]] = OrganCodes(_code(category), _code(type_), _code(modifier))
    return found


def organ_codes(tag: str) -> OrganCodes | None:
    """The codes of a canonical tag, None for tags without a standard code."""
    return _entries().get(tag)


def known_tags() -> list[str]:
    return list(_entries())
