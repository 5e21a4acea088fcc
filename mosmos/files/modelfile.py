"""MOSMOS model files: safetensors weights with a JSON header.

One self-describing file per model. The header (safetensors metadata key ``mosmos``) holds the
format version, the model config, tags with label values, modality, preprocessing, provenance and the
model card. Loading never unpickles and never runs code from the file.

Format 2 stores floating-point weights in fp16 (half the size of fp32; they are computed in fp32 again
when read) and one SHA-256 per tensor group (the first component of a tensor's name: ``network``,
``text`` ...). A group is verified when it is read, so a reader may read only the groups it needs
(safetensors reads tensors lazily) and still never use an unverified byte. Format 1 (fp32, one SHA-256
over all tensors) is still read.

A segmentation model's header also holds ``pixel_tag_maps: {"epsilon": e}``, the temperature L_pta
learnt, which inference needs to read the maps as class probabilities (``map_epsilon``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MosmosError
from .atomic import atomic_write_bytes
from .filecache import once_per_file_version

if TYPE_CHECKING:  # torch is imported only where tensors are handled: listing model files needs none
    import torch

FORMAT_VERSION = 2
# header["kind"] of the two kinds of model file
PRETRAIN_KIND = "mosmos-pretrain"
SEGMENTATION_KIND = "mosmos-segmentation"
HEADER_KEY = "mosmos"
STORAGE_DTYPE = "float16"
FP16_MAX = 65504.0
# epsilon's initial value (the paper's): what files written before epsilon was stored are read with.
EPSILON_FALLBACK = 0.07


def tensor_group(name: str) -> str:
    return name.split(".", 1)[0]


def tensors_digest(tensors: Mapping[str, "torch.Tensor"]) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-d tensor (BatchNorm counters, scalars) cannot be viewed as bytes directly.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def group_digests(tensors: Mapping[str, "torch.Tensor"]) -> dict[str, str]:
    groups: dict[str, dict] = {}
    for name, t in tensors.items():
        groups.setdefault(tensor_group(name), {})[name] = t
    return {g: tensors_digest(members) for g, members in sorted(groups.items())}


def _storage_form(t: "torch.Tensor") -> "torch.Tensor":
    """fp32/fp64 weights as fp16 (round to nearest); a tensor fp16 cannot hold (|x| > 65504) stays as it is."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.float32, torch.float64) and (t.numel() == 0 or t.abs().max().item() <= FP16_MAX):
        return t.to(torch.float16)
    return t


def save_model(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"], header: dict[str, Any]) -> None:
    """Write a model file atomically. ``header`` must be JSON-serialisable.

    Args:
        path: the file to write.
        tensors: name -> tensor, the weights.
        header: the model's description (kind, config, labels, preprocessing, provenance), JSON-serialisable.
    """
    from safetensors.torch import save as st_save

    stored = {k: _storage_form(v) for k, v in tensors.items()}
    full = {"format_version": FORMAT_VERSION, **header, "storage_dtype": STORAGE_DTYPE,
            "digests": group_digests(stored)}
    full.pop("sha256", None)  # format 1's whole-file digest: a header copied from a format-1 file must not keep it
    atomic_write_bytes(path, st_save(stored, metadata={HEADER_KEY: json.dumps(full)}))


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header alone (cheap: reads only the start of the file).

    Args:
        path: the model file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000 or n > path.stat().st_size - 8:
                raise ValueError
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except FileNotFoundError:
        raise MosmosError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise MosmosError(f"{path}: is a folder, not a model file") from None
    except (OSError, ValueError, json.JSONDecodeError, AttributeError):
        raise MosmosError(f"{path}: not a MOSMOS model file (unreadable safetensors header)") from None
    return _parse_header(path, meta)


def _parse_header(path: Path, meta: dict) -> dict[str, Any]:
    if HEADER_KEY not in meta:
        raise MosmosError(f"{path}: not a MOSMOS model file (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError:
        raise MosmosError(f"{path}: corrupt MOSMOS header") from None
    version = header.get("format_version") if isinstance(header, dict) else None
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise MosmosError(f"{path}: unsupported model file format version {version!r} "
                          f"(this mosmos reads 1 to {FORMAT_VERSION})")
    return header


class ModelTensors(Mapping):
    """The tensors of a model file, read one group at a time on first use and verified against the group's
    digest before any of it is returned; floating-point tensors come back as fp32. Each tensor is handed out
    once and then forgotten (asked for again, its group is read again): a model that keeps this mapping to
    read its text tower later does not also keep a second copy of the weights it already loaded.
    ``groups_read`` tells which groups were read (a segmentation with known organs never reads ``text``)."""

    def __init__(self, path: Path, header: dict[str, Any]):
        from safetensors import safe_open

        self.path, self.header = path, header
        try:
            with safe_open(str(path), framework="pt") as f:
                self._names = sorted(f.keys())
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise MosmosError(f"{path}: truncated or corrupt model file ({_first_line(e)})") from None
        digests = header.get("digests")
        groups = {tensor_group(n) for n in self._names}
        if not isinstance(digests, dict) or set(digests) != groups:
            raise MosmosError(f"{path}: checksum mismatch: the file's tensor groups do not match its header")
        self._cache: dict[str, torch.Tensor] = {}
        self.groups_read: list[str] = []

    def __getitem__(self, name: str) -> "torch.Tensor":
        if name not in self._cache:
            if name not in self._names:
                raise KeyError(name)
            self.read_groups([tensor_group(name)])
        return self._cache.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def read_groups(self, groups: Iterable[str]) -> None:
        from safetensors import safe_open

        todo = list(groups)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                read = {g: {n: f.get_tensor(n) for n in self._names if tensor_group(n) == g} for g in todo}
        except FileNotFoundError:
            raise MosmosError(f"{self.path}: model file not found (removed while in use)") from None
        except Exception as e:
            raise MosmosError(f"{self.path}: truncated or corrupt model file ({_first_line(e)})") from None
        for g, members in read.items():
            if tensors_digest(members) != self.header["digests"][g]:
                raise MosmosError(f"{self.path}: checksum mismatch in the '{g}' weights: "
                                  "the model file was modified or damaged")
        for g, members in read.items():
            self._cache.update({n: _compute_form(t) for n, t in members.items()})
            self.groups_read.append(g)


def _compute_form(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def open_model(path: str | os.PathLike) -> tuple[Mapping[str, "torch.Tensor"], dict[str, Any]]:
    """(tensors read lazily by group, header). A format-1 file has one digest for everything: it is read whole."""
    path = Path(path)
    header = read_header(path)
    if header["format_version"] == 1:
        return _load_v1(path, header), header
    return ModelTensors(path, header), header


def load_model(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """Read and verify a whole model file; returns (tensors, header), floating-point tensors in fp32.

    Args:
        path: the model file.
    """
    tensors, header = open_model(path)
    if isinstance(tensors, ModelTensors):
        tensors.read_groups(sorted({tensor_group(n) for n in tensors}))
    return dict(tensors), header


@once_per_file_version
def verify_model(path: str | os.PathLike) -> None:
    """Raise MosmosError unless every tensor of the model file matches its checksums. Once per version of the
    file: a server checking its models before each run reads each one once."""
    load_model(path)


def _load_v1(path: Path, header: dict[str, Any]) -> dict[str, "torch.Tensor"]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise MosmosError(f"{path}: truncated or corrupt model file ({e})") from None
    if tensors_digest(tensors) != header.get("sha256"):
        raise MosmosError(f"{path}: checksum mismatch: the model file was modified or damaged")
    return tensors


def map_epsilon(header: dict[str, Any], source: str) -> tuple[float, str | None]:
    """(epsilon, notice) of a segmentation model's pixel–tag maps. A file written before epsilon was
    stored gives EPSILON_FALLBACK and a notice saying so: its overlays keep their shape (the winning
    class does not depend on epsilon) but their probabilities may be sharper or flatter than the ones L_pta trained."""
    maps = header.get("pixel_tag_maps")
    if maps is None:
        return EPSILON_FALLBACK, (f"{source} does not store epsilon (the temperature of the pixel–tag maps; "
                                  f"written by an older mosmos): attention overlays use its initial value "
                                  f"{EPSILON_FALLBACK}, so their probabilities are approximate")
    epsilon = maps.get("epsilon") if isinstance(maps, dict) else None
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < float("inf"):
        raise MosmosError(f"{source}: invalid pixel_tag_maps.epsilon {epsilon!r} in the model header "
                          "(need a positive number)")
    return float(epsilon), None
