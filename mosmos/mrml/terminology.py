"""Standard (SNOMED CT) terminology for segments. The MOSMOS terminology context (a Slicer terminology JSON
holding the 20 organs MOSMOS segments) is the one source: segments carry entries into it, serialised the way
Slicer's Terminologies module stores them (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry), and
Slicer's terminologies logic loads it (load_context) so that its terminology selector resolves every segment.
The context file and its codes live in the core (mosmos.tags.terminology), which DICOM SEG output reads too."""

from __future__ import annotations

from mosmos.errors import MosmosError
from mosmos.tags.terminology import CONTEXT_FILE, context_name, known_tags, organ_codes  # noqa: F401 (re-exported)

ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _serialise(code) -> str:
    return "^".join(code) if code is not None else "^^"


def terminology_entry(tag: str) -> str | None:
    """Serialised terminology entry for a canonical tag, None for tags without a standard code."""
    codes = organ_codes(tag)
    if codes is None:
        return None
    return "~".join([context_name(), _serialise(codes.category), _serialise(codes.type), _serialise(codes.modifier),
                     ANATOMIC_CONTEXT, "^^", "^^"])


def load_context(terminologies_logic) -> str:
    """Load the MOSMOS context into Slicer's terminologies logic (once); returns its name."""
    name = context_name()
    if not terminologies_logic.IsTerminologyContextLoaded(name):
        if terminologies_logic.LoadTerminologyFromFile(CONTEXT_FILE) != name:
            raise MosmosError(f"{CONTEXT_FILE}: Slicer could not load this terminology context")
    return name


def resolved_label(terminologies_logic, entry: str) -> str | None:
    """The organ a serialised entry names in the loaded terminologies (the 3dSlicerLabel of its type or type
    modifier), None when they do not hold it: what Slicer's terminology selector can show for a segment."""
    import slicer

    parsed = slicer.vtkSlicerTerminologyEntry()
    if not terminologies_logic.DeserializeTerminologyEntry(entry, parsed):
        return None
    terminologies_logic.UpdateEntryFromLoadedTerminologies(parsed, [parsed.GetTerminologyContextName()], [])
    modifier = parsed.GetTypeModifierObject()
    return (modifier.GetSlicerLabel() if modifier.GetCodeValue() else None) or parsed.GetTypeObject().GetSlicerLabel()
