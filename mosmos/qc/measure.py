"""What the anatomy checks measure on one segment, on the physical grid (from the affine, never from the
array's storage order): its volume, its centroid in RAS millimetres, the share of its largest connected
component, the faces of the scan it touches, and the share of it that lies outside the body; and, once per
scan, the body itself (its mask, its midline from left to right, its centre)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# The body mask is found on a coarse grid: it only places the midline and the body's centre, and a full
# 512x512x300 connected-component pass would cost more than the whole check is allowed (3 % of a run).
_BODY_VOXELS = 96
# CT: anything denser than -500 HU is tissue (air is -1000, lung about -850). Other images: 3 % of the way
# from the darkest to the brightest percentile: the air around the body is dark in MR too, and the hollows
# of dark tissue inside are filled below.
_CT_BODY_HU = -500.0


@dataclass(frozen=True)
class Body:
    """The patient's body in one scan: ``mask`` on the (strided) grid ``step``, its centre in RAS mm and the
    world x of its midline (the plane between the patient's right and left)."""

    mask: np.ndarray
    step: tuple[int, int, int]
    center: np.ndarray
    midline_x: float


@dataclass(frozen=True)
class OrganMeasure:
    voxels: int
    volume_ml: float
    centroid: np.ndarray | None      # RAS mm
    largest_share: float             # the largest connected component's share of the voxels
    cut_faces: tuple[str, ...]       # the scan's faces the segment touches, in the patient's words
    outside_body: float              # share of the segment outside the body mask


def world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) -> RAS mm (N, 3)."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def voxel_ml(affine: np.ndarray) -> float:
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def find_body(image: np.ndarray, affine: np.ndarray, ct: bool) -> Body:
    """The largest connected tissue region (a CT's table and the air around the patient left out)."""
    step = tuple(max(1, math.ceil(n / _BODY_VOXELS)) for n in image.shape)
    coarse = np.asarray(image[::step[0], ::step[1], ::step[2]], dtype=np.float32)
    if ct:
        threshold = _CT_BODY_HU
    else:
        low, high = np.percentile(coarse, [1, 99])
        threshold = low + 0.03 * (high - low)
    tissue = ndimage.binary_opening(coarse > threshold, iterations=1)
    labels, n = ndimage.label(tissue)
    if n == 0:
        mask = coarse > threshold
    else:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    # Lungs, bowel gas and dark MR regions are holes in the tissue; fill them slice by slice across the
    # patient's long axis, since a scan's top or bottom slice opens them to the volume's edge in 3D.
    axial = int(np.argmax(np.abs(affine[2, :3])))
    mask = np.moveaxis(mask, axial, 0)
    mask = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in mask]), 0, axial)
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] = affine[:3, :3] * np.array(step, float)
    points = world(coarse_affine, np.argwhere(mask).astype(np.float64)) if mask.any() else \
        world(affine, (np.array(image.shape, float) - 1)[None] / 2)
    return Body(mask, step, points.mean(0), float(points[:, 0].mean()))


def face_name(affine: np.ndarray, axis: int, high: bool) -> str:
    """The patient's side the face ``axis`` = 0 (``high`` False) or = n - 1 (``high`` True) looks towards."""
    outward = affine[:3, axis] * (1.0 if high else -1.0)
    k = int(np.argmax(np.abs(outward)))
    positive = outward[k] > 0
    return (("left", "right"), ("back", "front"), ("lower", "upper"))[k][int(positive)]


def organ_box(labelmap: np.ndarray) -> list:
    """The bounding box (a tuple of slices, or None) of every label value, from one pass over the map."""
    return ndimage.find_objects(np.asarray(labelmap).astype(np.int32, copy=False))


def measure_organ(labelmap: np.ndarray, value: int, box, affine: np.ndarray, body: Body | None,
                  fragments: bool = True) -> tuple[OrganMeasure, np.ndarray | None]:
    """Measure the segment ``labelmap == value`` (X, Y, Z) within its bounding ``box`` on the grid of ``affine``;
    returns the measure and the segment's mask within the box."""
    if box is None:
        return OrganMeasure(0, 0.0, None, 1.0, (), 0.0), None
    sub = labelmap[box] == value
    n = int(np.count_nonzero(sub))
    if n == 0:
        return OrganMeasure(0, 0.0, None, 1.0, (), 0.0), None
    ijk = np.argwhere(sub).astype(np.float64) + np.array([s.start for s in box], float)
    centroid = world(affine, ijk.mean(0)[None])[0]
    share = 1.0
    if fragments:
        labels, count = ndimage.label(sub)
        if count > 1:
            share = float(np.bincount(labels.ravel())[1:].max()) / n
    cut = []
    for axis, s in enumerate(box):
        if s.start == 0:
            cut.append(face_name(affine, axis, False))
        if s.stop == labelmap.shape[axis]:
            cut.append(face_name(affine, axis, True))
    outside = 0.0
    if body is not None:
        coarse = np.minimum((ijk // np.array(body.step)).astype(np.int64), np.array(body.mask.shape) - 1)
        outside = 1.0 - float(body.mask[coarse[:, 0], coarse[:, 1], coarse[:, 2]].mean())
    return OrganMeasure(n, n * voxel_ml(affine), centroid, share, tuple(cut), outside), sub
