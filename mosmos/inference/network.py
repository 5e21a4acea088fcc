"""What the inference engine needs from a segmentation network, and how model files become networks.

The engine treats the network as a black box with this protocol::

    roi_size: tuple[int, ...]          # sliding-window size on the model grid (3 values; 2 for a 2D net)
    forward(x (B, C, *roi)) -> (logits (B, K, *roi), maps (B, Q, *coarse))
    open_set_maps(x, tag_names) -> (B, len(tag_names), *coarse)    # optional

K = number of label values in header["labels"] (channel k = label value k's position in the sorted
label list), Q = K (map channel q belongs to the same class as logit channel q).

Model files name their architecture in header["config"]["arch"]; ``register_architecture`` maps that
name to a builder ``builder(header, tensors) -> torch.nn.Module`` that constructs the network and loads
the weights; ``tensors`` is read lazily from the file, a group at a time (mosmos.files.modelfile.open_model), so a
builder reads only what it uses. mosmos's own architectures (MOSMOS_ARCHITECTURES) are built by
mosmos.models.segmentation, which the engine imports when a file names one: the networks never import the
engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import MosmosError
from ..files.modelfile import SEGMENTATION_KIND, open_model
from ..options import ARCHITECTURES as MOSMOS_ARCHITECTURES
from ..options import CPU

Builder = Callable[[dict, dict], torch.nn.Module]
ARCHITECTURES: dict[str, Builder] = {}


@runtime_checkable
class SegmentationNetwork(Protocol):
    roi_size: tuple[int, ...]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def register_architecture(name: str, builder: Builder) -> None:
    """Make model files with header["config"]["arch"] == name loadable (a later call replaces)."""
    ARCHITECTURES[name] = builder


def roi_size_of(network: Any, header: dict) -> tuple[int, ...]:
    roi = getattr(network, "roi_size", None)
    if roi is None:
        config = header.get("config") or {}
        roi = config.get("roi_size") or config.get("img_size") or (header.get("preprocessing") or {}).get("roi_size")
    if roi is None:
        raise MosmosError("model: the network declares no roi_size (sliding-window size)")
    if isinstance(roi, int):
        roi = (roi,) * 3
    return tuple(int(r) for r in roi)


def load_segmentation_model(path, device: torch.device | str = CPU) -> tuple[torch.nn.Module, dict]:
    """(network in eval mode on ``device``, header) from a MOSMOS segmentation model file."""
    tensors, header = open_model(path)
    labels = header.get("labels")
    if header.get("kind") != SEGMENTATION_KIND or not isinstance(labels, dict):
        raise MosmosError(f"{path}: not a segmentation model (kind {header.get('kind')!r}); "
                          "fine-tune it first with `mosmos finetune`")
    arch = (header.get("config") or {}).get("arch")
    builder = ARCHITECTURES.get(arch)
    if builder is None and arch in MOSMOS_ARCHITECTURES:
        from ..models.segmentation import segmentation_model_from_file_state as builder
    if builder is None:
        known = ", ".join(sorted({*MOSMOS_ARCHITECTURES, *ARCHITECTURES}))
        raise MosmosError(f"{path}: unknown network architecture {arch!r} (known: {known})")
    try:
        network = builder(header, tensors)
    except MosmosError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise MosmosError(f"{path}: cannot build the {arch} network from the file ({e})") from None
    try:
        return network.eval().to(device), header
    except torch.cuda.OutOfMemoryError:
        raise MosmosError(f"{path}: the model does not fit in the free memory of {device}; "
                          "close other GPU programs or use --device cpu") from None
