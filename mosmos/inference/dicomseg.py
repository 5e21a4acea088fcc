"""DICOM SEG out: a label map on a DICOM series' own grid -> a DICOM Segmentation (BINARY, highdicom) that
references the source series and frames, with one SNOMED CT coded segment per organ (numbered 1..N in
ascending label value) and MOSMOS (version, model file SHA-256) as the segmentation algorithm. The attention
maps' Parametric Maps (mosmos.inference.parametric_map) share the organ codes and equipment written here."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import MosmosError
from ..files.modelcard import file_sha256
from ..tags.terminology import organ_codes
from .request import is_seg_output  # noqa: F401  (where the writers and the web app look for it)

SEG_SERIES_NUMBER = 4242          # after the scanner's own series numbers, recognisable in a PACS listing
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
LOCAL_SCHEME = "99MOSMOS"         # private coding scheme for organs SNOMED CT codes are not known for here
LABEL_VALUE = "label value "      # a segment's description: the organ's value in MOSMOS's label map


def concept(code):
    scheme, value, meaning = code
    return highdicom().sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def organ_concepts(name: str) -> tuple:
    """(category, type, laterality modifier or None) of an organ as (scheme, value, meaning) codes: SNOMED CT
    where the MOSMOS terminology has the organ, else a private 99MOSMOS type code under Anatomical Structure."""
    codes = organ_codes(name)
    if codes is None:
        return ANATOMICAL_STRUCTURE, (LOCAL_SCHEME, name[:64], name[:64]), None
    return codes.category, codes.type, codes.modifier


def _segment_description(number: int, organ: dict, algorithm):
    hd = highdicom()

    category, kind, modifier = organ_concepts(organ["name"])
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=organ["name"][:64],
        segmented_property_category=concept(category), segmented_property_type=concept(kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*organ["color"]) if organ.get("color") else None)
    if modifier is not None:
        # Laterality (right/left kidney) lives inside the property type item (tag 0062,0011).
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [concept(modifier)]
    # The organ's value in MOSMOS's label map, which the segment number equals only where the values run 1..N.
    desc.SegmentDescription = f"{LABEL_VALUE}{organ['label']}"
    return desc


def segment_numbers(seg) -> dict[int, int]:
    """Label value -> segment number of a SEG this module wrote (from its Segment Descriptions)."""
    return {int(s.SegmentDescription[len(LABEL_VALUE):]): int(s.SegmentNumber) for s in seg.SegmentSequence
            if str(s.get("SegmentDescription", "")).startswith(LABEL_VALUE)}


def highdicom():
    try:
        import highdicom as hd
    except ImportError:   # e.g. in a Slicer whose Python has not got it yet
        raise MosmosError("DICOM SEG and parametric map output need the highdicom package: "
                          "pip install 'highdicom>=0.28'") from None
    return hd


def check_referencable(source) -> None:
    """A SEG must name the study, series, frame of reference and each image it segments; anonymised exports
    sometimes empty these, and a SEG that cannot be matched to its images is worse than none."""
    for f, ds in zip(source.files, source.headers):
        for keyword, name in (("StudyInstanceUID", "Study Instance UID"), ("SeriesInstanceUID", "Series Instance UID"),
                              ("FrameOfReferenceUID", "Frame of Reference UID"), ("SOPInstanceUID", "SOP Instance UID"),
                              ("SOPClassUID", "SOP Class UID")):
            if not ds.get(keyword):
                raise MosmosError(f"{f}: no {name}, so a DICOM SEG cannot reference this series; "
                                  "write the label map as .nii.gz or .nrrd instead")


def segmentation_dataset(source, labelmap: np.ndarray, organs: list[dict], model_path, series_uid: str | None = None,
                         sop_uid: str | None = None):
    """A DICOM SEG dataset for ``labelmap`` (X, Y, Z, on the grid of ``source``, a dicom.DicomSource) with one
    segment per entry of ``organs`` ({"name", "label", "color"}) that has voxels (a SEG segment needs at least one
    frame; at least one organ must have voxels). Segments are numbered 1..N in ascending label value, as the
    standard and dcmqi require (no gaps), so they equal the label values where those run 1..N; each segment's
    Segment Description names its label value. ``series_uid``/``sop_uid``: the SEG's UIDs (default: new ones)."""
    from pydicom.sr.codedict import codes

    hd = highdicom()

    check_referencable(source)
    headers = source.headers
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    if labelmap.shape != (cols, rows, len(headers)):
        raise MosmosError(f"{source.folder}: label map of shape {labelmap.shape} is not on the series' grid "
                          f"({cols}, {rows}, {len(headers)})")
    present = sorted((o for o in organs if np.any(labelmap == o["label"])), key=lambda o: o["label"])
    if not present:
        raise MosmosError(f"{source.folder}: no organ found, so there is no segment to write as DICOM SEG")
    # Frame k, row r, column c = labelmap[c, r, k].
    numbers = np.zeros(int(labelmap.max()) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for n, o in enumerate(present, 1):
        numbers[o["label"]] = n
    frames = numbers[np.transpose(labelmap, (2, 1, 0))]
    model_path = Path(model_path)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MOSMOS", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"model": model_path.name, "model SHA-256": file_sha256(model_path)})
    first = headers[0]
    with quiet():
        seg = hd.seg.Segmentation(
            source_images=headers, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(n, o, algorithm) for n, o in enumerate(present, 1)],
            series_instance_uid=series_uid or hd.UID(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=sop_uid or hd.UID(),
            instance_number=1, content_label="MOSMOS",
            content_description=f"MOSMOS organ segmentation of {first.get('Modality', '')} "
            f"series {first.get('SeriesNumber', '')}".strip()[:64],
            series_description=f"MOSMOS {', '.join(o['name'] for o in present)}"[:64],
            omit_empty_frames=True, **equipment(first, model_path))
    mark_content_creator(seg)
    return seg


def mark_content_creator(ds) -> None:
    """Content Creator Name (type 2) present and empty: software, not a person, made the object; DCMTK warns
    when the attribute is missing."""
    ds.ContentCreatorName = None


def equipment(first, model_path) -> dict:
    """What SEG and parametric maps say about their maker, and the character set of the source they copy from
    (an empty Specific Character Set means the default repertoire, which ISO_IR 100 extends)."""
    return dict(manufacturer="MOSMOS", manufacturer_model_name="MOSMOS", software_versions=__version__,
                device_serial_number=Path(model_path).name[:64],
                specific_character_set=first.get("SpecificCharacterSet") or "ISO_IR 100")


@contextlib.contextmanager
def quiet():
    """highdicom warns about oddities of the source's own attributes (one-component patient names ...), which
    the derived object copies unchanged and the user cannot act on here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def seg_file(path, ds) -> Path:
    """The file a SEG goes to: ``path`` itself, or <SOP Instance UID>.dcm inside the folder ``path``."""
    path = Path(path)
    return path if str(path).lower().endswith(".dcm") else path / f"{ds.SOPInstanceUID}.dcm"


def check_outside_series(series_folder, *outputs) -> None:
    """Never write into the folder a DICOM series was read from (a PACS import would pick the result up as
    part of the source series, and a crash could leave debris among the originals)."""
    folder = Path(series_folder).resolve()
    for out in outputs:
        if out is None:
            continue
        target = Path(out).resolve()
        if target == folder or folder in target.parents:
            raise MosmosError(f"{out}: inside the input DICOM folder {series_folder}; "
                              "write results elsewhere, never into the source series")
