"""Standard (SNOMED CT) terminology for segments. The MOSMOS terminology context (a Slicer terminology JSON
holding the 20 organs MOSMOS segments) is the one source: segments carry entries into it, serialised the way
Slicer's Terminologies module stores them (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry), and
Slicer's terminologies logic loads it (load_context) so that its terminology selector resolves every segment."""

from __future__ import annotations

import functools
import json
import os

from mosmos.errors import MosmosError

CONTEXT_FILE = os.path.join(os.path.dirname(__file__), "SegmentationCategoryTypeModifier-MOSMOS.json")
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@functools.lru_cache(maxsize=1)
def _context() -> dict:
    with open(CONTEXT_FILE, encoding="utf-8") as f:
        return json.load(f)


def context_name() -> str:
    return _context()["SegmentationCategoryTypeContextName"]


def _code(coded: dict) -> str:
    return f"{coded['CodingSchemeDesignator']}^{coded['CodeValue']}^{coded['CodeMeaning']}"


@functools.lru_cache(maxsize=1)
def _entries() -> dict[str, tuple[dict, dict, dict | None]]:
    """tag -> (category, type, modifier or None), from the 3dSlicerLabel of each type or type modifier."""
    found = {}
    for category in _context()["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            if "3dSlicerLabel" in type_:
                found[type_["3dSlicerLabel"]] = (category, type_, None)
            for modifier in type_.get("Modifier", []):
                found[modifier["3dSlicerLabel"]] = (category, type_, modifier)
    return found


def terminology_entry(tag: str) -> str | None:
    """Serialised terminology entry for a canonical tag, None for tags without a standard code."""
    codes = _entries().get(tag)
    if codes is None:
        return None
    category, type_, modifier = codes
    return "~".join([context_name(), _code(category), _code(type_), _code(modifier) if modifier else "^^",
                     ANATOMIC_CONTEXT, "^^", "^^"])


def known_tags() -> list[str]:
    return list(_entries())


def load_context(terminologiesLogic) -> str:
    """Load the MOSMOS context into Slicer's terminologies logic (once); returns its name."""
    name = context_name()
    if not terminologiesLogic.IsTerminologyContextLoaded(name):
        if terminologiesLogic.LoadTerminologyFromFile(CONTEXT_FILE) != name:
            raise MosmosError(f"{CONTEXT_FILE}: Slicer could not load this terminology context")
    return name


def resolved_label(terminologiesLogic, entry: str) -> str | None:
    """The organ a serialised entry names in the loaded terminologies (the 3dSlicerLabel of its type or type
    modifier), None when they do not hold it: what Slicer's terminology selector can show for a segment."""
    import slicer

    parsed = slicer.vtkSlicerTerminologyEntry()
    if not terminologiesLogic.DeserializeTerminologyEntry(entry, parsed):
        return None
    terminologiesLogic.UpdateEntryFromLoadedTerminologies(parsed, [parsed.GetTerminologyContextName()], [])
    modifier = parsed.GetTypeModifierObject()
    return (modifier.GetSlicerLabel() if modifier.GetCodeValue() else None) or parsed.GetTypeObject().GetSlicerLabel()
