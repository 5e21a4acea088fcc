"""Files the commands write, refused before any work when writing them would destroy something (the writing
itself is atomic: mosmos.files.atomic).

An output may replace only a file this program wrote earlier for the same purpose (a label map over a label
map, a model file over a model file): never one of the run's inputs, and never any other existing file,
since ``--output`` typed in the wrong order or next to the data would otherwise overwrite it silently."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from ..errors import MosmosError

# The NIfTI ``descrip`` / NRRD ``mosmos`` field that marks a volume written by mosmos, per kind.
VOLUME_MARKS = {"label map": "MOSMOS label map", "attention map": "MOSMOS attention map"}
NRRD_MARK_FIELD = "mosmos"


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(path, kind: str, inputs=(), others=()) -> Path:
    """Refuse ``path`` (one-line MosmosError) when it is, or resolves to, one of ``inputs`` (files or folders)
    or ``others`` (the run's other outputs), or when it exists and is not an earlier output of ``kind``
    (see ``is_output_of``). Also refuses a folder or an unwritable place. Returns ``path`` as a Path."""
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, Path(source)):
            raise MosmosError(f"{path}: is an input of this run ({source}); choose another output name")
    for other in others:
        if other is not None and same_file(path, Path(other)):
            raise MosmosError(f"{path}: given for two outputs; choose different names")
    if path.is_dir():
        raise MosmosError(f"{path}: is a folder, not a file name")
    if path.exists() and not is_output_of(path, kind):
        raise MosmosError(f"{path}: exists and is not mosmos output ({kind}); remove it or choose another name")
    check_writable(path)
    return path


def check_output_folder(folder, inputs=()) -> Path:
    """An output folder: missing (it is made) or a folder, and not one of the run's input files or folders."""
    folder = Path(folder)
    for source in inputs:
        if source is not None and same_file(folder, Path(source)):
            raise MosmosError(f"{folder}: is an input of this run ({source}); choose another output folder")
    if folder.exists() and not folder.is_dir():
        raise MosmosError(f"{folder}: is a file, not a folder")
    check_writable(folder / "x")
    return folder


def check_writable(path) -> None:
    """Fail before any work if ``path`` could not be created; creates nothing (the writer makes missing folders)."""
    path = Path(path)
    if path.exists():
        if not os.access(path, os.W_OK):
            raise MosmosError(f"{path}: not writable")
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise MosmosError(f"{path}: cannot be created: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MosmosError(f"{path}: cannot be created: {folder} is not writable")


def is_output_of(path: Path, kind: str) -> bool:
    """Whether the existing file ``path`` is one this program writes as ``kind`` (read from its header only)."""
    name = path.name.lower()
    try:
        if kind in VOLUME_MARKS:
            return volume_mark(path) == VOLUME_MARKS[kind]
        if kind == "model file":
            from .modelfile import read_header

            read_header(path)
            return True
        if kind == "checkpoint":
            return zipfile.is_zipfile(path)  # torch.save's archive
        if kind == "DICOM SR":   # the organ volumes report beside a DICOM SEG (mosmos.inference.dicomsr)
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return ds.get("Manufacturer") == "MOSMOS" and ds.get("Modality") == "SR"
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        if kind == "event log":
            return first == "" or "event" in json.loads(first)
        if kind == "organ volumes":
            if name.endswith(".json"):
                return "organs" in json.loads(Path(path).read_text(encoding="utf-8"))
            return first.startswith("name,label,volume_ml")
        if kind == "QC report":
            report = json.loads(Path(path).read_text(encoding="utf-8"))
            return isinstance(report, list) and all("organ" in r and "status" in r for r in report)
        if kind == "metrics table":
            return first.startswith(("case,organ,dice", "| organ |"))
    except Exception:  # unreadable as that kind (the header readers raise many types): not ours
        return False
    raise ValueError(f"unknown output kind {kind!r}")


def volume_mark(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return nib.load(str(path)).header["descrip"].item().decode("ascii", "replace").strip() or None
    if name.endswith(".nrrd"):
        import nrrd

        return nrrd.read_header(str(path)).get(NRRD_MARK_FIELD)
    if name.endswith(".dcm"):  # a DICOM SEG stands for the label map, a parametric map for an attention map
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if str(ds.get("Manufacturer", "")) != "MOSMOS":
            return None
        return VOLUME_MARKS["label map" if ds.get("Modality") == "SEG" else "attention map"]
    return None
