"""Volumes in and out: NIfTI, NRRD and DICOM series folders to (array (X, Y, Z), voxel->RAS affine),
and atomic NIfTI/NRRD writers (a temporary file in the target folder, then os.replace)."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from ..outputs import NRRD_MARK_FIELD, VOLUME_MARKS, staging_file

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    array: np.ndarray          # (X, Y, Z) = (i, j, k)
    affine: np.ndarray         # 4x4 voxel -> RAS (mm)
    modality: str | None = None  # "CT"/"MR" when the file says (DICOM), else None


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith(".dcm"):
        return "dicom"
    return "unknown"


def read_volume(path) -> Volume:
    """Read a 3D volume; any problem -> one-line MosmosError naming the file."""
    path = Path(path)
    if not path.exists():
        raise MosmosError(f"{path}: no such file or folder")
    kind = _kind(path)
    try:
        if kind == "nifti":
            vol = _read_nifti(path)
        elif kind == "nrrd":
            vol = _read_nrrd(path)
        elif kind == "dicom":
            vol = _read_dicom(path if path.is_dir() else path.parent, None if path.is_dir() else path)
        else:
            raise MosmosError(f"{path}: unknown file type (expected .nii, .nii.gz, .nrrd, .nhdr or a DICOM folder)")
    except MosmosError:
        raise
    except Exception as e:  # third-party readers raise their own types (nrrd.NRRDError, nibabel's, pydicom's)
        raise MosmosError(f"{path}: cannot read ({type(e).__name__}: {e})".splitlines()[0]) from None
    return _squeeze_3d(vol, path)


def _squeeze_3d(vol: Volume, path: Path) -> Volume:
    a = vol.array
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise MosmosError(f"{path}: expected a 3D volume, got {a.ndim}D data of shape {a.shape}")
    vol.array = a
    return vol


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    img = nib.load(str(path))
    slope, inter = img.dataobj.slope, img.dataobj.inter
    scaled = not (slope in (None, 1) and inter in (None, 0)) or np.isnan(slope)
    # Unscaled data keeps its own type (int16 CT stays int16: half the memory of float32).
    array = img.get_fdata(dtype=np.float32) if scaled else np.asarray(img.dataobj)
    return Volume(array, np.asarray(img.affine, dtype=float))


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    array, header = nrrd.read(str(path))
    ndim = array.ndim
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(r, dtype=float) for r in directions]
        spatial = [i for i, r in enumerate(rows) if r is not None and r.size == 3 and np.all(np.isfinite(r))]
        if len(spatial) != ndim:
            raise MosmosError(f"{path}: expected a 3D volume, got {ndim}D data with {ndim - len(spatial)} "
                              f"non-spatial axes (shape {array.shape})")
        m = np.stack([rows[i] for i in spatial], axis=1)
    else:
        spacings = header.get("spacings", [1.0] * ndim)
        m = np.diag([float(s) if np.isfinite(s) else 1.0 for s in spacings])
    if m.shape != (3, 3):
        raise MosmosError(f"{path}: expected a 3D volume, got {ndim}D data of shape {array.shape}")
    affine = np.eye(4)
    affine[:3, :3] = m
    affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        affine = LPS_TO_RAS @ affine
    elif space in ("left-anterior-superior", "las"):
        affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine
    elif space not in ("right-anterior-superior", "ras", "scanner-xyz", "3d-right-handed"):
        raise MosmosError(f"{path}: unsupported NRRD space {space!r}")
    return Volume(array, affine)


def _read_dicom(folder: Path, chosen: Path | None) -> Volume:
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list] = defaultdict(list)
    want = None
    if chosen is not None:
        want = str(pydicom.dcmread(str(chosen), stop_before_pixels=True).get("SeriesInstanceUID", ""))
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError):
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            continue
        series[str(ds.get("SeriesInstanceUID", ""))].append((f, ds))
    if not series:
        raise MosmosError(f"{folder}: no DICOM images with position/orientation found")
    uid = want if want in series else max(series, key=lambda k: len(series[k]))
    items = series[uid]
    first = items[0][1]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise MosmosError(f"{folder}: multi-frame DICOM is not supported (export it as single-frame slices)")
    if len(items) < 2:
        raise MosmosError(f"{folder}: expected a 3D volume, but the series has a single 2D slice")
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    items.sort(key=lambda it: float(np.dot(np.asarray(it[1].ImagePositionPatient, dtype=float), normal)))
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in items])
    steps = np.diff(positions @ normal)
    if np.any(np.abs(steps) < 1e-4):
        raise MosmosError(f"{folder}: several images share one slice position (more than one volume in the series?)")
    if steps.max() - steps.min() > 0.1 * abs(steps.mean()) + 1e-3:
        raise MosmosError(f"{folder}: uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm): missing slices?")
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing   # i runs along a row: columns are col_spacing apart
    affine[:3, 1] = col_dir * row_spacing   # j runs down a column
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(items) - 1)  # keeps gantry tilt
    affine[:3, 3] = positions[0]
    rows, cols = int(first.Rows), int(first.Columns)
    array = None
    for k, (f, _) in enumerate(items):
        ds = pydicom.dcmread(str(f))
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise MosmosError(f"{f}: image size {ds.Rows}x{ds.Columns} differs from the series' {rows}x{cols}")
        pixels = ds.pixel_array
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        integral = slope == int(slope) and inter == int(inter) and pixels.dtype.kind in "iu"
        if array is None:
            array = np.empty((cols, rows, len(items)), dtype=np.int32 if integral else np.float32)
        elif not integral and array.dtype != np.float32:
            array = array.astype(np.float32)
        if array.dtype == np.int32:
            array[:, :, k] = pixels.T.astype(np.int32) * int(slope) + int(inter)
        else:
            array[:, :, k] = pixels.T.astype(np.float32) * slope + inter
    if array.dtype == np.int32 and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    modality = str(first.get("Modality", "")).upper() or None
    return Volume(array, LPS_TO_RAS @ affine, modality)


# ---------------------------------------------------------------------------------------------
# Writing

def output_format(path) -> str:
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    raise MosmosError(f"{path}: output must end with .nii.gz, .nii or .nrrd")


def _write_now(path: Path, array: np.ndarray, affine: np.ndarray, kind: str | None) -> None:
    """``kind`` ("label map", "attention map") marks the file as that output of mosmos, which a later run
    may replace (mosmos.outputs.check_output)."""
    mark = VOLUME_MARKS[kind] if kind else None
    if output_format(path) == "nifti":
        import nibabel as nib

        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        if array.dtype.kind in "iub":
            img.header.set_intent("label")
        if mark:
            img.header["descrip"] = mark.encode("ascii")
        nib.save(img, str(path))
    else:
        import nrrd

        lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
        header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
                  "space origin": lps[:3, 3], "kinds": ["domain"] * 3, "encoding": "gzip"}
        if mark:
            header[NRRD_MARK_FIELD] = mark
        nrrd.write(str(path), np.asarray(array), header)


class StagedWriter:
    """Writes every output to a temporary file next to its target, and renames them all only on
    commit(): on any error or cancel no output (and no temporary) is left behind."""

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []

    def volume(self, path, array: np.ndarray, affine: np.ndarray, kind: str | None = None) -> None:
        self._stage(path, lambda tmp: _write_now(tmp, array, affine, kind))

    def text(self, path, text: str) -> None:
        self._stage(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _stage(self, path, write) -> None:
        path = Path(path)
        suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
        tmp = staging_file(path, suffix=f".part{suffix}")
        self._staged.append((tmp, path))
        try:
            write(tmp)
        except OSError as e:
            raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None

    def commit(self) -> None:
        try:
            for tmp, path in self._staged:
                os.replace(tmp, path)
        except OSError as e:
            raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None
        finally:
            self.discard()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> "StagedWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self.discard()  # commit() empties the list, so this only removes what an error left


def write_volume(path, array: np.ndarray, affine: np.ndarray, kind: str | None = None) -> None:
    """One volume, atomically."""
    with StagedWriter() as w:
        w.volume(path, array, affine, kind)
        w.commit()
