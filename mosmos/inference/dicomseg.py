"""DICOM SEG out: a label map on a DICOM series' own grid -> a DICOM Segmentation (BINARY, highdicom) that
references the source series and frames, with one SNOMED CT coded segment per organ and MOSMOS (version,
model file SHA-256) as the segmentation algorithm; attention maps as DICOM Parametric Maps on the same grid."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
from pydicom.uid import JPEGLSLossless

from .. import __version__
from ..errors import MosmosError
from ..files.modelcard import file_sha256
from ..tags.terminology import organ_codes
from .request import is_seg_output  # noqa: F401  (where the writers and the web app look for it)

SEG_SERIES_NUMBER = 4242          # after the scanner's own series numbers, recognisable in a PACS listing
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
LOCAL_SCHEME = "99MOSMOS"         # private coding scheme for organs SNOMED CT codes are not known for here


def _concept(code):
    scheme, value, meaning = code
    return highdicom().sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _segment_description(number: int, organ: dict, algorithm):
    hd = highdicom()

    codes = organ_codes(organ["name"])
    if codes is None:
        category, kind = ANATOMICAL_STRUCTURE, (LOCAL_SCHEME, organ["name"][:64], organ["name"][:64])
    else:
        category, kind = codes.category, codes.type
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=organ["name"][:64],
        segmented_property_category=_concept(category), segmented_property_type=_concept(kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(*organ["color"]) if organ.get("color") else None)
    if codes is not None and codes.modifier is not None:
        # Laterality (right/left kidney) lives inside the property type item (tag 0062,0011).
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _concept(codes.modifier)]
    return desc


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
    segment per entry of ``organs`` ({"name", "label", "color"}); organs with no voxel are left out (a SEG
    segment needs at least one frame), and at least one organ must have voxels. ``series_uid``/``sop_uid``:
    the SEG's UIDs (default: new ones)."""
    from pydicom.sr.codedict import codes

    hd = highdicom()

    check_referencable(source)
    headers = source.headers
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    if labelmap.shape != (cols, rows, len(headers)):
        raise MosmosError(f"{source.folder}: label map of shape {labelmap.shape} is not on the series' grid "
                          f"({cols}, {rows}, {len(headers)})")
    present = [o for o in organs if np.any(labelmap == o["label"])]
    if not present:
        raise MosmosError(f"{source.folder}: no organ found, so there is no segment to write as DICOM SEG")
    # Segment numbers run 1..N in the order of ``organs``; frame k, row r, column c = labelmap[c, r, k].
    numbers = np.zeros(int(labelmap.max()) + 1, dtype=np.uint8 if len(present) < 256 else np.uint16)
    for n, o in enumerate(present, 1):
        numbers[o["label"]] = n
    frames = numbers[np.transpose(labelmap, (2, 1, 0))]
    model_path = Path(model_path)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MOSMOS", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"model": model_path.name, "model SHA-256": file_sha256(model_path)})
    first = headers[0]
    with _quiet():
        return hd.seg.Segmentation(
            source_images=headers, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(n, o, algorithm) for n, o in enumerate(present, 1)],
            series_instance_uid=series_uid or hd.UID(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=sop_uid or hd.UID(),
            instance_number=1, content_label="MOSMOS",
            content_description=f"MOSMOS organ segmentation of {first.get('Modality', '')} "
            f"series {first.get('SeriesNumber', '')}".strip()[:64],
            series_description=f"MOSMOS {', '.join(o['name'] for o in present)}"[:64],
            omit_empty_frames=True, **_equipment(first, model_path))


def _equipment(first, model_path) -> dict:
    """What SEG and parametric maps say about their maker, and the character set of the source they copy from
    (an empty Specific Character Set means the default repertoire, which ISO_IR 100 extends)."""
    return dict(manufacturer="MOSMOS", manufacturer_model_name="MOSMOS", software_versions=__version__,
                device_serial_number=Path(model_path).name[:64],
                specific_character_set=first.get("SpecificCharacterSet") or "ISO_IR 100")


@contextlib.contextmanager
def _quiet():
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


def attention_dataset(source, tag: str, probability: np.ndarray, model_path, series_uid: str, number: int,
                      sop_uid: str | None = None):
    """An attention map (X, Y, Z, values in [0, 1]: the probability that ``tag`` wins at the voxel) as a DICOM
    Parametric Map on the source grid: 16-bit integers (the IOD's smallest) with a real-world value mapping back
    to [0, 1], JPEG-LS lossless (smooth maps compress well), as one instance of the run's map series
    (``sop_uid``: its SOP Instance UID, default a new one)."""
    hd = highdicom()
    check_referencable(source)
    frames = np.round(np.clip(np.transpose(probability, (2, 1, 0)), 0, 1) * 65535).astype(np.uint16)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="probability", lut_explanation=f"MOSMOS pixel-tag attention: {tag}"[:64],
        unit=hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units"), value_range=(0, 65535),
        slope=1 / 65535, intercept=0)
    first = source.headers[0]
    with _quiet():
        pm = hd.pm.ParametricMap(
            source_images=source.headers, pixel_array=frames, series_instance_uid=series_uid,
            series_number=SEG_SERIES_NUMBER + 1, sop_instance_uid=sop_uid or hd.UID(), instance_number=number,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping], window_center=32767.5, window_width=65535,
            transfer_syntax_uid=JPEGLSLossless, content_label="ATTENTION",
            content_description=f"MOSMOS attention map: {tag}"[:64],
            series_description="MOSMOS attention maps", **_equipment(first, model_path))
    # General Series Laterality (type 2C): the source's, else empty, i.e. unknown to MOSMOS.
    pm.Laterality = first.get("Laterality") or None
    return pm
