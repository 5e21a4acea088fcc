"""A fine-tuned segmentation model as it lives in a model file: the network (MOSMOS-UNETR or
MOSMOS-U-Net) and the frozen text side that embeds organ names.

The text side is kept so that any organ name, including ones the network was not fine-tuned on
(open-set tags), can be embedded and attended to at inference (docs/method.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import MosmosError
from ..files.modelfile import SEGMENTATION_KIND, ModelTensors
from .backbones import canonical_backbone, create_clip
from .text import TagPromptLearner, TextEncoder, get_tokenizer
from .unet2d import MosmosUNet2D
from .unetr import MosmosUNETR
from ..options import UNET2D, UNETR


def build_network(config: dict) -> nn.Module:
    """A randomly initialised fine-tuning network from its ``config`` (as stored in model files)."""
    classes = {UNETR: MosmosUNETR, UNET2D: MosmosUNet2D}
    kwargs = dict(config)
    arch = kwargs.pop("arch", None)
    # Model files written before the maps reached the output block have no such entry: the paper's decoder.
    kwargs.setdefault("maps_at_output", False)
    if arch not in classes:
        raise MosmosError(f"model config: unknown architecture {arch!r} (known: {', '.join(classes)})")
    try:
        return classes[arch](**kwargs)
    except TypeError as e:
        raise MosmosError(f"model config: invalid entries for {arch} ({e})") from None


class TagEmbedder(nn.Module):
    """CLIP text encoder + CoOp prompt context: ``forward(names) -> (Q, C)``. Frozen after
    pre-training; its state uses the pre-training model's names (``text_encoder.``, ``tag_prompt.``)."""

    def __init__(self, backbone: str, quick_gelu: bool | None = None, n_ctx: int = 16, n_tag_tokens: int = 10,
                 weights: str | None = None):
        super().__init__()
        backbone = canonical_backbone(backbone)
        clip = create_clip(backbone, weights, quick_gelu=quick_gelu)
        self.text_encoder = TextEncoder(clip)
        self.tag_prompt = TagPromptLearner(self.text_encoder, get_tokenizer(backbone), n_ctx, n_tag_tokens)
        self.config = {"backbone": backbone, "quick_gelu": bool(quick_gelu), "n_ctx": n_ctx,
                       "n_tag_tokens": n_tag_tokens}
        self.requires_grad_(False)

    @classmethod
    def from_pretrain_file_state(cls, tensors: dict[str, torch.Tensor], config: dict) -> "TagEmbedder":
        embedder = cls(config["backbone"], config["quick_gelu"], config["n_ctx"], config["n_tag_tokens"])
        state = {k: v for k, v in tensors.items() if k.startswith(("text_encoder.", "tag_prompt."))}
        embedder.load_state_dict(state, strict=True)
        return embedder

    @torch.no_grad()
    def forward(self, names: Sequence[str]) -> torch.Tensor:
        return self.tag_prompt(list(names))


class SegmentationModel(nn.Module):
    """``forward(x) -> (logits, pixel_tag_maps)``; ``open_set_maps(x, names)`` gives the maps of
    other organ names through the same tag decoder (no labels: the image decoder never saw them)."""

    def __init__(self, network: nn.Module, embedder: TagEmbedder | Callable[[], TagEmbedder] | None,
                 roi_size: Sequence[int], epsilon: float | None = None):
        """``embedder``: the text side, or a function that builds it from the model file on first use (the
        network holds the embeddings of its own organs, so only open-set names need the text tower)."""
        super().__init__()
        self.network = network
        self.roi_size = tuple(int(r) for r in roi_size)
        self._load_embedder = None
        if isinstance(embedder, nn.Module) or embedder is None:
            self.embedder = embedder
        else:
            self.embedder, self._load_embedder = None, embedder
        # L_pta's learnt temperature: maps / epsilon are the class logits it trained (losses.finetune.pta_logits).
        self.epsilon = None if epsilon is None else float(epsilon)
        self._embedding_cache: dict[tuple[str, ...], torch.Tensor] = {}

    def _text_side(self) -> TagEmbedder | None:
        if self.embedder is None and self._load_embedder is not None:
            self.embedder = self._load_embedder().eval().to(next(self.network.parameters()).device)
            self._load_embedder = None
        return self.embedder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network(x)

    def open_set_maps(self, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        if self._text_side() is None:
            raise MosmosError("this model file has no text encoder: it cannot attend to other organ names")
        key = tuple(names)
        if key not in self._embedding_cache:  # one text pass per tag set, not per window
            # fp32 whatever autocast is active: a cached bf16 copy would leak into later fp32 runs
            self._embedding_cache[key] = self.embedder(key).float()
        queries = self._embedding_cache[key].to(device=x.device)
        return self.network.tag_maps(x, queries)

    def to_file_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        header: dict[str, Any] = {"kind": SEGMENTATION_KIND, "config": dict(self.network.config)}
        if self.epsilon is not None:
            header["pixel_tag_maps"] = {"epsilon": self.epsilon}
        if self._text_side() is not None:
            tensors.update({f"text.{k}": v for k, v in self.embedder.state_dict().items()})
            header["text_config"] = dict(self.embedder.config)
        return tensors, header


def _under(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # keys first: a lazily read file (modelfile.ModelTensors) then reads only the group under ``prefix``
    return {k[len(prefix):]: tensors[k] for k in tensors if k.startswith(prefix)}


def segmentation_model_from_file_state(header: dict, tensors: Mapping[str, torch.Tensor]) -> SegmentationModel:
    """The model of a file; the text tower (``text.`` tensors) is read from ``tensors`` only when an organ name
    the model was not fine-tuned on is first asked for (format 2: a group is read on its own)."""
    network = build_network(header["config"])
    network.load_state_dict(_under(tensors, "network."), strict=True)
    load_embedder = None
    if header.get("text_config"):
        c = header["text_config"]

        def load_embedder() -> TagEmbedder:
            embedder = TagEmbedder(c["backbone"], c["quick_gelu"], c["n_ctx"], c["n_tag_tokens"])
            embedder.load_state_dict(_under(tensors, "text."), strict=True)
            return embedder

        if not isinstance(tensors, ModelTensors):  # all in memory already (a format-1 file): keep no second copy
            load_embedder = load_embedder()
    # the stored epsilon as it is (None when absent), so a loaded model saves the file's maps header again
    epsilon = (header.get("pixel_tag_maps") or {}).get("epsilon")
    return SegmentationModel(network, load_embedder, header["preprocessing"]["roi_size"], epsilon)
