"""MOSMOS model files: safetensors weights with a JSON header.

One self-describing file per model. The header (safetensors metadata key ``mosmos``) holds the
format version, the model config, tags with label values, modality, preprocessing and provenance.
Loading never unpickles and never runs code from the file; a SHA-256 of the tensors, stored in the
header, detects truncation and tampering.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MosmosError

if TYPE_CHECKING:  # torch is imported only where tensors are handled: listing model files needs none
    import torch

FORMAT_VERSION = 1
# header["kind"] of the two kinds of model file
PRETRAIN_KIND = "mosmos-pretrain"
SEGMENTATION_KIND = "mosmos-segmentation"
HEADER_KEY = "mosmos"


def tensors_digest(tensors: dict[str, "torch.Tensor"]) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape: a 0-d tensor (BatchNorm counters, scalars) cannot be viewed as bytes directly.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    from .outputs import staging_file

    path = Path(path)
    tmp = staging_file(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise MosmosError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def save_model(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"], header: dict[str, Any]) -> None:
    """Write a model file atomically. ``header`` must be JSON-serialisable."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    full = {"format_version": FORMAT_VERSION, **header, "sha256": tensors_digest(tensors)}
    atomic_write_bytes(path, st_save(tensors, metadata={HEADER_KEY: json.dumps(full)}))


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header alone (cheap: reads only the start of the file)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000 or n > path.stat().st_size - 8:
                raise ValueError
            meta = json.loads(f.read(n)).get("__metadata__") or {}
    except FileNotFoundError:
        raise MosmosError(f"{path}: model file not found") from None
    except (OSError, ValueError, json.JSONDecodeError):
        raise MosmosError(f"{path}: not a MOSMOS model file (unreadable safetensors header)") from None
    return _parse_header(path, meta)


def _parse_header(path: Path, meta: dict) -> dict[str, Any]:
    if HEADER_KEY not in meta:
        raise MosmosError(f"{path}: not a MOSMOS model file (no '{HEADER_KEY}' header)")
    try:
        header = json.loads(meta[HEADER_KEY])
    except json.JSONDecodeError:
        raise MosmosError(f"{path}: corrupt MOSMOS header") from None
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MosmosError(f"{path}: unsupported model file format version {version!r} "
                          f"(this mosmos reads up to {FORMAT_VERSION})")
    return header


def load_model(path: str | os.PathLike) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """Read and verify a model file; returns (tensors, header)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    header = read_header(path)
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, OSError, ValueError) as e:
        raise MosmosError(f"{path}: truncated or corrupt model file ({e})") from None
    if tensors_digest(tensors) != header.get("sha256"):
        raise MosmosError(f"{path}: checksum mismatch: the model file was modified or damaged")
    return tensors, header
