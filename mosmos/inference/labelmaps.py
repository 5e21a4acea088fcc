"""Any tool's segmentation as (label map, organ names) on an image's grid: a NIfTI or NRRD label map with a
class map (TotalSegmentator's ``{"1": "spleen", ...}``), or a DICOM SEG (its segments' own labels). A label
map stored in another axis order or direction than the image is brought onto the image's array order; one on
another grid is an error (QC measures the scan it was made on)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from ..tags import normalize_tag
from .volume import LPS_TO_RAS, Volume


def organ_name(name: str) -> str:
    """A class name in TotalSegmentator's or MOSMOS's words -> the MOSMOS tag, or the cleaned name."""
    return normalize_tag(name) or " ".join(str(name).replace("_", " ").split()).lower()


def read_class_map(path, present: set[int], task: str | None = None) -> dict[int, str]:
    """``{"1": "spleen", ...}``; from a file of several such maps (class_map_subset.json's "total", "total_mr"),
    the one named ``task``, else the one that names every label value present."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MosmosError(f"{path}: cannot read the class map ({type(e).__name__}: {e})".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise MosmosError(f"{path}: a class map is a JSON object {{\"1\": \"spleen\", ...}}")
    if all(isinstance(v, str) for v in data.values()):
        maps = [data]
    elif task is not None:
        if not isinstance(data.get(task), dict):
            raise MosmosError(f"{path}: no class map {task!r} (it has {', '.join(map(str, data))})")
        maps = [data[task]]
    else:
        maps = [v for v in data.values() if isinstance(v, dict)]
    parsed = []
    for m in maps:
        try:
            parsed.append({int(k): str(v) for k, v in m.items()})
        except ValueError:
            raise MosmosError(f"{path}: class map keys must be label values such as \"1\"") from None
    fits = [m for m in parsed if present <= set(m)]
    if len(fits) == 1 or (fits and len(parsed) == 1):
        return fits[0]
    if len(fits) > 1:
        raise MosmosError(f"{path}: {len(fits)} of its class maps name every label value; choose one with --task")
    best = min(parsed, key=lambda m: len(present - set(m))) if parsed else {}
    missing = sorted(present - set(best))
    raise MosmosError(f"{path}: label values {', '.join(map(str, missing[:10]))} are not named by the class map")


def read_dicom_seg(path) -> tuple[Volume, dict[int, str]]:
    """A DICOM SEG -> label map (segment numbers as values, RAS affine) and segment labels."""
    from .dicomseg import highdicom

    hd = highdicom()
    try:
        seg = hd.seg.segread(str(path))
        vol = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
        names = {int(n): seg.get_segment_description(int(n)).segment_label for n in seg.segment_numbers}
    except Exception as e:  # pydicom/highdicom raise their own types for a bad or unsupported SEG
        raise MosmosError(f"{path}: cannot read the DICOM SEG ({type(e).__name__}: {e})".splitlines()[0]) from None
    return Volume(np.asarray(vol.array), LPS_TO_RAS @ np.asarray(vol.affine, float)), names


def is_dicom_seg(path) -> bool:
    from .dicom import is_dicom_file

    p = Path(path)
    if not p.is_file() or not is_dicom_file(p):
        return False
    import pydicom

    return getattr(pydicom.dcmread(p, stop_before_pixels=True), "Modality", "") == "SEG"


def onto_grid(labels: Volume, image: Volume, path) -> np.ndarray:
    """``labels``' array in ``image``'s axis order when both are the same grid, in any storage order."""
    tol = 1e-3 * float(np.abs(image.affine[:3, :3]).max())
    for perm in itertools.permutations(range(3)):
        if tuple(labels.array.shape[p] for p in perm) != tuple(image.array.shape):
            continue
        for flips in itertools.product((False, True), repeat=3):
            a = labels.affine[:, list(perm) + [3]].copy()
            a = a[:, [0, 1, 2, 3]]
            for axis, flip in enumerate(flips):
                if flip:
                    a[:3, 3] += a[:3, axis] * (image.array.shape[axis] - 1)
                    a[:3, axis] *= -1
            if np.allclose(a, image.affine, atol=tol):
                arr = np.transpose(labels.array, perm)
                return np.flip(arr, [i for i, f in enumerate(flips) if f]) if any(flips) else arr
    shape = "x".join(map(str, labels.array.shape))
    raise MosmosError(f"{path}: its grid ({shape}) does not match the image's "
                      f"({'x'.join(map(str, image.array.shape))}, or its position and spacing differ)")
