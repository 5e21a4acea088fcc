"""Volumes in and out: NIfTI, NRRD and DICOM series folders to (array (X, Y, Z), voxel->RAS affine),
and atomic NIfTI/NRRD writers (a temporary file in the target folder, then os.replace)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MosmosError
from ..files.atomic import staging_file
from ..files.outputs import NRRD_MARK_FIELD, VOLUME_MARKS
from .volume import LPS_TO_RAS, Volume


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    from .dicom import is_dicom_file

    if is_dicom_file(path):   # a .dcm name, or the DICOM preamble (PACS files often have no extension)
        return "dicom"
    return "unknown"


def read_volume(path, series_uid: str | None = None) -> Volume:
    """Read a 3D volume; any problem -> one-line MosmosError naming the file. ``series_uid`` picks one
    series of a DICOM folder (default: the largest)."""
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
            from .dicom import read_dicom

            vol = read_dicom(path, series_uid)
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


# ---------------------------------------------------------------------------------------------
# Writing

def output_format(path) -> str:
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    raise MosmosError(f"{path}: output must end with .nii.gz, .nii or .nrrd")


# gzip level of .nii.gz outputs (ISA-L, levels 0-3). Measured on a 512x512x300 attention map (2 cores): level 1
# compresses in 0.9 s (random weights' noise-like map) and 0.06 s (a trained map, mostly zeros) with 16-bit
# storage, where zlib at level 1 took 6.5 s and 0.47 s for the same size; level 0 is no faster and larger.
GZIP_LEVEL = 1
SLAB_BYTES = 16 << 20  # NIfTI data is written a slab of its slowest axis at a time


def _write_nifti(f, array: np.ndarray, affine: np.ndarray, mark: str | None, scale: float | None) -> None:
    """A single-file NIfTI-1 into the binary stream ``f``: header, then the data in slabs of its slowest axis
    (the file is Fortran-ordered, so a C-ordered array is never transposed whole)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    header = img.header
    if scale is not None:
        header.set_slope_inter(scale, 0.0)
    elif array.dtype.kind in "iub":
        header.set_intent("label")
    if mark:
        header["descrip"] = mark.encode("ascii")
    header.set_data_offset(352)
    f.write(header.binaryblock + b"\0" * (352 - len(header.binaryblock)))  # no extensions
    last = array.shape[-1]
    step = max(1, SLAB_BYTES // max(1, array[..., :1].nbytes))
    for k in range(0, last, step):
        f.write(array[..., k:k + step].tobytes(order="F"))


def _write_now(path: Path, array: np.ndarray, affine: np.ndarray, kind: str | None, scale: float | None) -> None:
    """``kind`` ("label map", "attention map") marks the file as that output of mosmos, which a later run
    may replace (mosmos.files.outputs.check_output); ``scale``: see StagedWriter.volume."""
    mark = VOLUME_MARKS[kind] if kind else None
    if output_format(path) == "nifti":
        from isal import igzip

        with igzip.open(path, "wb", compresslevel=GZIP_LEVEL) if str(path).lower().endswith(".gz") \
                else open(path, "wb") as f:
            _write_nifti(f, np.asarray(array), affine, mark, scale)
    else:
        import nrrd

        lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
        header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T,
                  "space origin": lps[:3, 3], "kinds": ["domain"] * 3, "encoding": "gzip"}
        if mark:
            header[NRRD_MARK_FIELD] = mark
        if scale is not None:  # NRRD has no scale factor
            array = np.multiply(array, scale, dtype=np.float32)
        nrrd.write(str(path), np.asarray(array), header, compression_level=1)   # pynrrd's default, 9, is slow


class StagedWriter:
    """Writes every output to a temporary file next to its target, and renames them all only on
    commit(): on any error or cancel no output (and no temporary) is left behind. Volumes are written
    on a worker thread (compression releases the GIL), so the caller can make the next one meanwhile;
    one at a time, so at most the volume being written and the one being made are held."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._staged: list[tuple[Path, Path]] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mosmos-write")
        self._writing = None   # the Future of the volume being written

    def volume(self, path, array: np.ndarray, affine: np.ndarray, kind: str | None = None,
               scale: float | None = None) -> None:
        """``scale``: ``array`` holds integers that stand for themselves times ``scale`` (NIfTI's scale factor,
        which every reader applies; NRRD gets the products as float32)."""
        self._wait()
        self._writing = self._pool.submit(self._stage, path, lambda tmp: _write_now(tmp, array, affine, kind, scale))

    def text(self, path, text: str) -> None:
        self._stage(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def dataset(self, path, ds) -> None:
        """A pydicom Dataset as a DICOM Part 10 file (preamble and file meta information)."""
        self._stage(path, lambda tmp: ds.save_as(str(tmp), enforce_file_format=True))

    def _stage(self, path, write) -> None:
        path = Path(path)
        suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
        tmp = staging_file(path, suffix=f".part{suffix}")
        self._staged.append((tmp, path))
        try:
            write(tmp)
        except OSError as e:
            raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None

    def _wait(self) -> None:
        """The volume being written, finished (its error raised)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def commit(self) -> None:
        try:
            self._wait()
            for tmp, path in self._staged:
                os.replace(tmp, path)
        except OSError as e:
            raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None
        finally:
            self.discard()

    def discard(self) -> None:
        self._pool.shutdown(wait=True)   # a volume still being written finishes before its file is removed
        self._writing = None
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> "StagedWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self.discard()  # commit() empties the list, so this only removes what an error left


def write_volume(path, array: np.ndarray, affine: np.ndarray, kind: str | None = None,
                 scale: float | None = None) -> None:
    """One volume, atomically (``scale``: see StagedWriter.volume)."""
    with StagedWriter() as w:
        w.volume(path, array, affine, kind, scale)
        w.commit()
