"""Standard (SNOMED CT) terminology for segments, serialised the way Slicer's Terminologies module
stores it in a segment (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry). The codes are the
core's (mosmos.terminology), which DICOM SEG output uses too."""

from __future__ import annotations

from mosmos.terminology import organ_codes

# A context that ships with Slicer and holds these anatomical structures.
CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _serialise(code) -> str:
    return "^".join(code) if code is not None else "^^"


def terminology_entry(tag: str) -> str | None:
    """Serialised terminology entry for a canonical tag, None for tags without a standard code."""
    codes = organ_codes(tag)
    if codes is None:
        return None
    return "~".join([CONTEXT, _serialise(codes.category), _serialise(codes.type), _serialise(codes.modifier),
                     ANATOMIC_CONTEXT, "^^", "^^"])
