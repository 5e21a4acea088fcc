"""A volume in memory: its voxels (X, Y, Z) and voxel->RAS affine, whatever file or DICOM series it came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray          # (X, Y, Z) = (i, j, k)
    affine: np.ndarray         # 4x4 voxel -> RAS (mm)
    modality: str | None = None  # "CT"/"MR" when the file says (DICOM), else None
    source: object | None = None  # dicom.DicomSource when read from a DICOM series (what a DICOM SEG references)
