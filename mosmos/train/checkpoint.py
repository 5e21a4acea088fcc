"""Resume checkpoints (model, optimiser, scheduler, step) written atomically by rank 0.

They are this program's own files, read back with ``weights_only=True`` so that loading one never
runs code; the shareable artefact of a run is the model file (mosmos.files.modelfile), not these."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import MosmosError
from ..files.atomic import atomic_write_bytes
from ..options import CPU


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=CPU, weights_only=True)
    except FileNotFoundError:
        raise MosmosError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:  # torch raises several unrelated types for damaged archives
        raise MosmosError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})".splitlines()[0]) from None
