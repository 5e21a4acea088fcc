"""DICOM series in: a folder (or one file of it) -> Volume (X, Y, Z) with a voxel->RAS affine and the slices'
headers, which a DICOM SEG written later must reference.

Pixel data of every transfer syntax a PACS sends are decoded by pydicom's own decoders (little/big endian,
deflate, RLE) and its plugins: Pillow (JPEG baseline/extended, JPEG 2000), pyjpegls (JPEG-LS) and python-gdcm
(all of them, and the only permissively licensed decoder of JPEG Lossless process 14 / SV1). 12-bit JPEG
Extended (process 4) needs the optional, GPL-3.0 licensed pylibjpeg-libjpeg (extra ``jpeg12``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from .volume import LPS_TO_RAS, Volume

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"   # a DICOMDIR: an index of files, not an image
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Derived objects with pixel data that are not images to segment: DICOM SEG, parametric maps, RT dose.
DERIVED_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.481.2"}


@dataclass
class DicomSource:
    """Where a volume read from DICOM came from: its folder, series and the headers (no pixel data) of its
    slices in k order, which is what a DICOM SEG on the same grid references."""
    folder: Path
    series_uid: str
    headers: list                                   # pydicom Datasets, one per slice, ordered along k
    files: list[Path]
    notices: list[str] = field(default_factory=list)


@dataclass
class _Series:
    uid: str
    items: list = field(default_factory=list)      # (path, header)

    def describe(self) -> str:
        ds = self.items[0][1]
        text = f"{self.uid} ({ds.get('Modality', '?')}"
        if ds.get("SeriesDescription"):
            text += f" '{ds.SeriesDescription}'"
        return text + f", {len(self.items)} image{'s' if len(self.items) != 1 else ''})"


def is_dicom_file(path: Path) -> bool:
    """The DICOM Part 10 preamble ("DICM" at byte 128), or a .dcm name (files written without preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) == b"DICM":
                return True
    except OSError:
        return False
    return path.suffix.lower() == ".dcm"


def scan_series(folder: Path) -> dict[str, _Series]:
    """Image series under ``folder`` (sub-folders included, as PACS exports nest them), by Series Instance UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, _Series] = {}
    dicomdir, others = None, 0
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if not is_dicom_file(f):
            others += 1
            continue
        try:
            # Deferred pixel data: the header tells whether the file holds an image without loading it.
            ds = pydicom.dcmread(str(f), defer_size=1024)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            others += 1
            continue
        if str(ds.get("file_meta", {}).get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY \
                or "DirectoryRecordSequence" in ds:
            dicomdir = f
            continue
        sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if not any(k in ds for k in PIXEL_KEYWORDS) or sop_class in DERIVED_SOP_CLASSES:
            continue   # structured reports, presentation states, segmentations and maps made earlier ...
        for k in PIXEL_KEYWORDS:
            if k in ds:
                del ds[k]
        # Some exports empty the dataset's SOP UIDs but keep them in the file meta information.
        for keyword, meta in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not ds.get(keyword) and ds.file_meta.get(meta):
                setattr(ds, keyword, ds.file_meta[meta].value)
        uid = str(ds.get("SeriesInstanceUID", ""))
        series.setdefault(uid, _Series(uid)).items.append((f, ds))
    if not series:
        if dicomdir is not None:
            raise MosmosError(f"{dicomdir}: a DICOMDIR alone, without the image files it indexes "
                              "(copy the whole exported folder)")
        raise MosmosError(f"{folder}: no DICOM image files found ({others} other file{'s' if others != 1 else ''})")
    return series


def choose_series(folder: Path, series: dict[str, _Series], series_uid: str | None) -> tuple[_Series, list[str]]:
    listing = "; ".join(s.describe() for s in sorted(series.values(), key=lambda s: -len(s.items)))
    if series_uid:
        if series_uid not in series:
            raise MosmosError(f"{folder}: no series {series_uid}; the folder holds {listing}")
        return series[series_uid], []
    if len(series) == 1:
        return next(iter(series.values())), []
    ranked = sorted(series.values(), key=lambda s: -len(s.items))
    if len(ranked[0].items) == len(ranked[1].items):
        raise MosmosError(f"{folder}: {len(series)} series of equal size; choose one with --series UID: {listing}")
    return ranked[0], [f"{folder}: {len(series)} series, segmenting the largest, {ranked[0].describe()} "
                       f"(choose another with --series UID: {listing})"]


def _check_frames(f: Path, ds) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        sop = ds.get("SOPClassUID")
        name = sop.name if sop is not None else "unknown SOP class"
        raise MosmosError(f"{f}: {name} ({frames} frames in one file) is not supported; "
                          "export the series as single-frame CT/MR images")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise MosmosError(f"{f}: colour image ({ds.get('PhotometricInterpretation', '?')}); "
                          "expected a greyscale CT or MR series")
    for keyword, name in (("ImagePositionPatient", "Image Position (Patient)"),
                          ("ImageOrientationPatient", "Image Orientation (Patient)"),
                          ("PixelSpacing", "Pixel Spacing")):
        if ds.get(keyword) in (None, ""):
            raise MosmosError(f"{f}: no {name}, so the image cannot be placed in space")


def series_geometry(series: _Series) -> tuple[list, np.ndarray]:
    """Slices sorted along the normal and the voxel->LPS affine; one-line errors for what is not one volume."""
    items = series.items
    for f, ds in items:
        _check_frames(f, ds)
    f0, first = items[0]
    if len(items) < 2:
        raise MosmosError(f"{f0}: expected a 3D volume, but the series has a single 2D slice")
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    for f, ds in items[1:]:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-3):
            kind = " (a localizer in the series?)" if "LOCALIZER" in list(ds.get("ImageType", [])) else ""
            raise MosmosError(f"{f}: image orientation differs from the rest of series {series.uid}{kind}; "
                              "remove it or export the axial images alone")
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise MosmosError(f"{f}: image size {ds.Rows}x{ds.Columns} differs from the series' "
                              f"{first.Rows}x{first.Columns}")
        if [float(v) for v in ds.PixelSpacing] != [float(v) for v in first.PixelSpacing]:
            raise MosmosError(f"{f}: pixel spacing {list(ds.PixelSpacing)} differs from the series' "
                              f"{list(first.PixelSpacing)}")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    items = sorted(items, key=lambda it: float(np.dot(np.asarray(it[1].ImagePositionPatient, dtype=float), normal)))
    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in items])
    steps = np.diff(positions @ normal)
    same = np.flatnonzero(np.abs(steps) < 1e-4)
    if same.size:
        a, b = items[same[0]][0], items[same[0] + 1][0]
        raise MosmosError(f"{b}: same slice position as {a.name} (more than one volume in the series?)")
    if steps.max() - steps.min() > 0.1 * abs(steps.mean()) + 1e-3:
        gap = int(np.argmax(steps))
        raise MosmosError(f"{items[gap + 1][0]}: uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm; "
                          f"gap after {items[gap][0].name}): missing slices?")
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing   # i runs along a row: columns are col_spacing apart
    affine[:3, 1] = col_dir * row_spacing   # j runs down a column
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(items) - 1)  # keeps gantry tilt
    affine[:3, 3] = positions[0]
    return items, affine


def _pixels(f: Path):
    import pydicom

    ds = None
    try:
        ds = pydicom.dcmread(str(f))
        return ds, ds.pixel_array
    except Exception as e:  # pydicom and its plugins raise many types for truncated or undecodable data
        syntax = ds.file_meta.get("TransferSyntaxUID") if ds is not None else None
        name = syntax.name if syntax is not None else "unknown transfer syntax"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if syntax == pydicom.uid.JPEGExtended12Bit and int(ds.get("BitsStored", 8)) > 8:
            # Only libjpeg decodes 12-bit JPEG; its Python wheel is GPL-3.0, so MOSMOS leaves it optional.
            reason = "12-bit JPEG needs the optional decoder pylibjpeg-libjpeg (GPL-3.0): pip install 'mosmos[jpeg12]'"
        raise MosmosError(f"{f}: cannot decode the pixel data ({name}: {reason})") from None


def read_dicom(path, series_uid: str | None = None):
    """A DICOM series folder, or one file of it, -> Volume with ``source`` (DicomSource)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    series = scan_series(folder)
    notices: list[str] = []
    if path.is_file():
        import pydicom

        series_uid = series_uid or str(pydicom.dcmread(str(path), stop_before_pixels=True).get("SeriesInstanceUID", ""))
    chosen, notices = choose_series(folder, series, series_uid)
    items, affine = series_geometry(chosen)
    rows, cols = int(items[0][1].Rows), int(items[0][1].Columns)
    array = None
    for k, (f, _) in enumerate(items):
        ds, pixels = _pixels(f)
        if pixels.shape != (rows, cols):
            raise MosmosError(f"{f}: pixel data of shape {pixels.shape}, expected {rows}x{cols}")
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
    first = items[0][1]
    modality = str(first.get("Modality", "")).upper() or None
    source = DicomSource(folder, chosen.uid, [ds for _, ds in items], [f for f, _ in items], notices)
    return Volume(array, LPS_TO_RAS @ affine, modality, source)
