"""Organ volumes and their QC out as a DICOM Structured Report: a TID 1500 Measurement Report (Comprehensive 3D SR,
highdicom) beside the DICOM SEG it describes, the form dcmqi's tid1500reader and so Slicer's QuantitativeReporting
read. One measurement group per organ:

- an organ the SEG holds: TID 1411 (Volumetric ROI Measurements) referencing its segment, with the organ as the
  finding (and finding site with its laterality), its volume in mL (UCUM ``ml``), the QC status as a coded
  qualitative evaluation and each reason as a text one (TID 1411 allows coded questions with text answers);
- an organ asked for and not found (no segment to reference): TID 1501 with the finding, status and reasons.

No code system names a segmentation's QC outcome, so the status is coded in MOSMOS's private scheme (99MOSMOS, as
the SEG's organs without a SNOMED CT code are)."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..files.modelcard import file_sha256
from ..qc.checks import CHECK, FAIL
from ..qc.report import OK
from .dicomseg import (LOCAL_SCHEME, SEG_SERIES_NUMBER, concept, equipment, highdicom, organ_concepts, quiet,
                       seg_file, segment_numbers)

SR_SERIES_NUMBER = SEG_SERIES_NUMBER + 2     # after the SEG (4242) and the attention maps (4243)
VOLUME = ("SCT", "118565006", "Volume")
MILLILITRE = ("UCUM", "ml", "milliliter")
QC_STATUS = (LOCAL_SCHEME, "qc-status", "MOSMOS QC status")
QC_REASON = (LOCAL_SCHEME, "qc-reason", "MOSMOS QC reason")
STATUS_CODES = {OK: (LOCAL_SCHEME, OK, "ok: no flag"),
                CHECK: (LOCAL_SCHEME, CHECK, "check: review this segment"),
                FAIL: (LOCAL_SCHEME, FAIL, "fail: implausible segment")}
# TID 1500's Procedure Reported: the LOINC "unspecified body region" procedures of the source's modality.
PROCEDURES = {"CT": ("LN", "25045-6", "CT unspecified body region"),
              "MR": ("LN", "25056-3", "MRI unspecified body region")}
IMAGING_PROCEDURE = ("SCT", "363679005", "Imaging")


def measurement_report_dataset(source, seg, organs: list[dict], model_path, series_uid: str | None = None,
                               sop_uid: str | None = None):
    """A Comprehensive 3D SR (TID 1500) of ``organs`` ({"name", "label", "volume_ml", "status", "reasons"}, as
    mosmos.qc.segmentation.check_result leaves them) referencing the segments of ``seg`` (the SEG dataset of
    mosmos.inference.dicomseg.segmentation_dataset, made of the same organs) and the images of ``source``."""
    hd = highdicom()
    numbers = segment_numbers(seg)
    model_path = Path(model_path)
    algorithm = hd.sr.AlgorithmIdentification(name="MOSMOS", version=__version__,
                                              parameters=[f"model={model_path.name}",
                                                          f"model SHA-256={file_sha256(model_path)}"])
    groups = [_organ_group(hd, organ, seg, numbers.get(organ["label"]), algorithm) for organ in organs]
    first = source.headers[0]
    observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept(value="121007", scheme_designator="DCM", meaning="Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(), name="MOSMOS", manufacturer_name="MOSMOS", model_name=model_path.name[:64])))
    procedure = PROCEDURES.get(str(first.get("Modality", "")).upper(), IMAGING_PROCEDURE)
    report = hd.sr.MeasurementReport(observation_context=observer, procedure_reported=concept(procedure),
                                     imaging_measurements=groups)
    with quiet():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source.headers, seg], content=report[0], series_instance_uid=series_uid or hd.UID(),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=sop_uid or hd.UID(), instance_number=1,
            is_complete=True, series_description="MOSMOS organ volumes and QC",
            **_equipment(first, model_path))
    return sr


def _equipment(first, model_path) -> dict:
    """The SEG's equipment attributes, less the manufacturer Comprehensive3DSR takes on its own."""
    kept = equipment(first, model_path)
    return {"manufacturer": kept.pop("manufacturer"), **kept}


def _device_uid() -> str:
    """The observing device: MOSMOS at this version (the same UID in every report it writes)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["MOSMOS", __version__])


def _organ_group(hd, organ: dict, seg, number: int | None, algorithm):
    """One organ's measurement group: TID 1411 on its segment ``number`` of ``seg``, or TID 1501 when it has none
    (None)."""
    from pydicom.uid import generate_uid

    _, kind, modifier = organ_concepts(organ["name"])
    site = hd.sr.FindingSite(anatomic_location=concept(kind),
                             laterality=concept(modifier) if modifier is not None else None)
    # The tracking UID follows the SEG and the organ, so a report remade of the same SEG tracks the same finding.
    anchor = [str(seg.SOPInstanceUID), organ["name"]]
    common = dict(tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=anchor),
                                                               identifier=organ["name"][:64]),
                  finding_type=concept(kind), finding_sites=[site], algorithm_id=algorithm,
                  qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                      name=concept(QC_STATUS), value=concept(STATUS_CODES[organ["status"]]))])
    if number is not None:
        volume = hd.sr.Measurement(name=concept(VOLUME), value=float(organ["volume_ml"]), unit=concept(MILLILITRE))
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=_referenced_segment(hd, seg, number), measurements=[volume], **common)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    group[0].ContentSequence.extend(
        hd.sr.TextContentItem(name=concept(QC_REASON), value=reason,
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for reason in organ["reasons"])
    return group


def _referenced_segment(hd, seg, number: int):
    """The segment and its source series (ReferencedSegment.from_segmentation fails on a SEG of one segment, whose
    Segment Identification is shared by all frames)."""
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID))


def report_file(output, ds) -> Path:
    """Where the SR of a SEG written to ``output`` goes: beside a SEG file NAME.dcm, NAME_sr.dcm; into the SEG's
    folder, <SOP Instance UID of ``ds``>.dcm as the SEG itself."""
    path = Path(output)
    if str(path).lower().endswith(".dcm"):
        return path.with_name(path.name[:-len(".dcm")] + "_sr.dcm")
    return seg_file(path, ds)
