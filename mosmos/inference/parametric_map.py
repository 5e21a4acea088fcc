"""Attention maps out as DICOM Parametric Maps on a DICOM series' own grid, in the form every reader tested opens
with the right values and geometry (dcmqi's paramap2itkimage and so Slicer, highdicom, the OHIF adapter of
@cornerstonejs/adapters and dcmjs; see docs/user-guide/dicom.md):

- 32-bit float probabilities (in the 16-bit steps of the NIfTI maps) in Float Pixel Data with a Real World
  Value Mapping of slope 1 over [0, 1] and a Quantity (Slicer's parametric-map plugin needs one); the OHIF
  adapter ignores the mapping, so values are stored as they are meant, and no compressed transfer syntax holds
  floats, so the file is deflated instead;
- frame n is slice n of the series (ascending along the slice normal): dcmqi and the OHIF adapter put frame n
  at slice n whatever the frame's position says;
- the Frame Anatomy (the organ and its laterality), which the IOD requires and highdicom does not write."""

from __future__ import annotations

import numpy as np
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from .dicomseg import (SEG_SERIES_NUMBER, equipment, quiet, check_referencable, concept, highdicom,
                       mark_content_creator, organ_concepts)

# DICOM CID 7180 (the Quantity of a Real World Value Mapping) and CID 217 (visual explanations of AI output): a
# pixel-tag attention map scores each voxel for one class, the organ's tag.
QUANTITY = ("DCM", "130402", "Class activation")
NO_UNITS = ("UCUM", "1", "no units")
# Deflate: a 20-slice 512x512 map is 21 MB as float and a few MB deflated (docs/user-guide/dicom.md has sizes).
TRANSFER_SYNTAX = DeflatedExplicitVRLittleEndian
FRAME_LATERALITY = {"Right": "R", "Left": "L"}    # laterality modifier -> Frame Laterality; U: unpaired


def attention_dataset(source, tag: str, probability: np.ndarray, model_path, series_uid: str, number: int,
                      sop_uid: str | None = None):
    """An attention map (X, Y, Z, values in [0, 1]: the probability that ``tag`` wins at the voxel) as a DICOM
    Parametric Map on the grid of ``source`` (a dicom.DicomSource), one instance of the run's map series
    (``sop_uid``: its SOP Instance UID, default a new one)."""
    from .segmenter import QUANTUM

    hd = highdicom()
    check_referencable(source)
    # In the NIfTI maps' 16-bit steps (at most 7.6e-6 off): a trained model's near-zero probabilities become
    # exact zeros, which deflate to a sixth of their size (as float noise they hardly deflate at all).
    steps = np.round(np.clip(np.transpose(probability, (2, 1, 0)), 0, 1) / QUANTUM)
    frames = np.ascontiguousarray(steps * QUANTUM, dtype=np.float32)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="probability", lut_explanation=f"MOSMOS pixel-tag attention: {tag}"[:64],
        unit=concept(NO_UNITS), value_range=(0.0, 1.0), slope=1, intercept=0, quantity_definition=concept(QUANTITY))
    first = source.headers[0]
    with quiet():
        pm = hd.pm.ParametricMap(
            source_images=source.headers, pixel_array=frames, series_instance_uid=series_uid,
            series_number=SEG_SERIES_NUMBER + 1, sop_instance_uid=sop_uid or hd.UID(), instance_number=number,
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            window_center=0.5, window_width=1.0, transfer_syntax_uid=ExplicitVRLittleEndian,
            # Image Type value 4: a defined term (highdicom's default QUANTITY is none); the map is not an
            # arithmetic of the source's pixels.
            derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.NONE,
            content_label="ATTENTION", content_description=f"MOSMOS attention map: {tag}"[:64],
            series_description="MOSMOS attention maps", **equipment(first, model_path))
    _frames_in_slice_order(pm, source)
    _frame_anatomy(pm, tag)
    # General Series Laterality (type 2C) is not needed beside Frame Laterality; an empty one reads as "unknown".
    if first.get("Laterality"):
        pm.Laterality = first.Laterality
    elif "Laterality" in pm:
        del pm.Laterality
    mark_content_creator(pm)
    pm.file_meta.TransferSyntaxUID = TRANSFER_SYNTAX
    return pm


def _frames_in_slice_order(pm, source) -> None:
    """Reorders highdicom's frames (sorted its own way along the normal) so that frame n references, and lies
    at, slice n of ``source``."""
    uids = [h.SOPInstanceUID for h in source.headers]
    groups = list(pm.PerFrameFunctionalGroupsSequence)
    slice_of = [uids.index(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                for g in groups]
    order = np.argsort(slice_of)
    rows, cols = int(pm.Rows), int(pm.Columns)
    pixels = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(len(groups), rows, cols)
    pm.FloatPixelData = np.ascontiguousarray(pixels[order]).tobytes()
    pm.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
    for n, group in enumerate(pm.PerFrameFunctionalGroupsSequence, 1):
        # The one dimension is the position; its index follows the frames.
        group.FrameContentSequence[0].DimensionIndexValues = n


def _frame_anatomy(pm, tag: str) -> None:
    """Frame Anatomy (shared by all frames): the organ as the anatomic region and its laterality."""
    from pydicom.dataset import Dataset

    _, kind, modifier = organ_concepts(tag)
    region = concept(kind)
    if modifier is not None:
        region.AnatomicRegionModifierSequence = [concept(modifier)]
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [region]
    anatomy.FrameLaterality = FRAME_LATERALITY.get(modifier[2] if modifier else None, "U")
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
