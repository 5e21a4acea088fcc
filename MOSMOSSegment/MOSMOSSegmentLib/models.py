"""The models folder: installed MOSMOS model files, their organs and modality; adding a file."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from mosmos.errors import MosmosError
from mosmos.modelfile import PRETRAIN_KIND, SEGMENTATION_KIND

from . import deps

ENV_MODELS_DIR = "MOSMOS_MODELS_DIR"


def default_models_dir() -> Path:
    """$MOSMOS_MODELS_DIR, else ~/MOSMOS/models (shared by the GUI, batch script and command line)."""
    return Path(os.environ.get(ENV_MODELS_DIR) or Path.home() / "MOSMOS" / "models").expanduser()


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    path: Path
    kind: str
    modality: str
    organs: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def display_name(self) -> str:
        return f"{self.path.stem} ({self.modality or '?'}, {len(self.organs)} organs)"


def model_kind(header: dict) -> str:
    """"segmentation" or "pretrained", the words the module shows, for the core's file kinds."""
    kind = str(header.get("kind", ""))
    return {SEGMENTATION_KIND: "segmentation", PRETRAIN_KIND: "pretrained"}.get(kind, kind)


def model_info(path: str | os.PathLike) -> ModelInfo:
    from mosmos.modelfile import read_header

    path = Path(path)
    header = read_header(path)
    labels = header.get("labels") or {}
    organs = tuple(name for value, name in sorted(labels.items(), key=lambda kv: int(kv[0]))
                   if int(value) != 0 and name != "background")
    return ModelInfo(path, model_kind(header), str(header.get("modality", "")), organs)


def list_models(folder: str | os.PathLike | None = None, kind: str | None = "segmentation") -> list[ModelInfo]:
    """Readable model files in ``folder`` (default: default_models_dir()), by name; other files are skipped."""
    folder = Path(folder) if folder else default_models_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            info = model_info(path)
        except MosmosError:
            continue
        if kind is None or info.kind == kind:
            found.append(info)
    return found


def add_model_file(source: str | os.PathLike, folder: str | os.PathLike | None = None,
                   name: str | None = None) -> ModelInfo:
    """Verify ``source`` fully (header, tensors, checksum) and copy it into ``folder`` atomically, as ``name``
    (default: the source's file name; training runs all write "model.safetensors", so they pass their own).
    A file of the same name is replaced. Raises MosmosError naming the file when it is not a usable model."""
    deps.ensure_dependencies()  # the full check reads the tensors (safetensors, torch): a fresh Slicer has neither
    from mosmos.modelfile import load_model

    source = Path(source)
    _, header = load_model(source)
    if model_kind(header) != "segmentation":
        raise MosmosError(f"{source}: a {model_kind(header) or 'non-segmentation'} model cannot segment; "
                          "add a fine-tuned segmentation model")
    folder = Path(folder) if folder else default_models_dir()
    target = folder / (name or source.name)
    if target.exists() and target.resolve() == source.resolve():
        return model_info(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
        os.close(fd)
    except OSError as e:
        raise MosmosError(f"{folder}: cannot write to the models folder ({e.strerror or e})") from None
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise MosmosError(f"{target}: cannot copy the model ({e.strerror or e})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return model_info(target)
