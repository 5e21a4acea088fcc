"""A flagged organ's thumbnail for the cohort report: an axial and a coronal slice through the organ's centroid,
side by side, its outline drawn over the image, as a small PNG. Slices are cut in the patient's frame (from the
affine, whatever the file's storage order) and shown as radiologists read them: the patient's right on the left
of the picture, anterior (axial) and head (coronal) at the top, square millimetres."""

from __future__ import annotations

import io

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation
from scipy import ndimage

SIDE_PX = 128                   # the longer side of each slice's picture
OUTLINE = (255, 64, 32)         # the organ's outline, drawn in one colour whatever the organ
_MARGIN, _MIN_FIELD_MM = 0.5, 60.0  # around the organ: half its extent each side, at least 60 mm in all


def organ_thumbnail(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, value: int) -> bytes | None:
    """PNG bytes of the axial and coronal slices through ``labels == value`` (X, Y, Z arrays on the grid of
    ``affine``), or None when the organ has no voxel."""
    ornt = io_orientation(affine)  # the storage axes to RAS
    mask = apply_orientation(np.asarray(labels) == value, ornt)
    if not mask.any():
        return None
    picture = apply_orientation(np.asarray(image, np.float32), ornt)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.sqrt((affine[:3, :3] ** 2).sum(0))
    ijk = np.argwhere(mask)
    centre = np.round(ijk.mean(0)).astype(int)
    for axis in (1, 2):  # a curved organ may miss its centroid's slice: then its fullest slice
        others = tuple(a for a in range(3) if a != axis)
        counts = mask.sum(others)
        if not counts[centre[axis]]:
            centre[axis] = int(np.argmax(counts))
    low, high = ijk.min(0), ijk.max(0) + 1
    extent = (high - low) * spacing
    field = np.maximum(extent * (1 + 2 * _MARGIN), _MIN_FIELD_MM)
    start = np.maximum(np.round((low + high) / 2 - field / spacing / 2).astype(int), 0)
    stop = np.minimum(start + np.ceil(field / spacing).astype(int), mask.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    window = np.percentile(picture[box], [1, 99])
    axial = _slice(picture[:, :, centre[2]], mask[:, :, centre[2]], box[0], box[1], spacing[[0, 1]], window)
    coronal = _slice(picture[:, centre[1], :], mask[:, centre[1], :], box[0], box[2], spacing[[0, 2]], window)
    from PIL import Image

    both = Image.new("RGB", (axial.width + coronal.width + 4, max(axial.height, coronal.height)))
    both.paste(axial, (0, 0))
    both.paste(coronal, (axial.width + 4, 0))
    buf = io.BytesIO()
    both.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _slice(picture: np.ndarray, mask: np.ndarray, across: slice, down: slice, spacing, window):
    """One RAS slice (first axis right-left, second posterior-anterior or foot-head) cropped to ``across`` x
    ``down``, as an RGB picture: flipped so that the patient's right is on the left and anterior or head on
    top, stretched to square millimetres, the mask's outline drawn."""
    from PIL import Image

    picture, mask = picture[across, down], mask[across, down]
    low, high = window
    grey = np.clip((picture - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    grey, mask = np.flip(grey.T, (0, 1)), np.flip(mask.T, (0, 1))
    size_mm = np.array(grey.shape[::-1]) * np.asarray(spacing)  # (width, height)
    width, height = np.maximum(np.round(size_mm / size_mm.max() * SIDE_PX).astype(int), 1)
    grey = np.asarray(Image.fromarray(grey).resize((width, height), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0
    outline = mask & ~ndimage.binary_erosion(mask)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[outline] = OUTLINE
    return Image.fromarray(rgb)
