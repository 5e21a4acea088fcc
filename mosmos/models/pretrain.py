"""The MOSMOS pre-training model: CLIP encoders + CoOp tag prompts + tag decoder + multi-label head."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from ..errors import MosmosError
from ..files.modelfile import PRETRAIN_KIND, load_model, save_model
from ..tags import PRETRAIN_TAGS
from .backbones import ImageEncoder, canonical_backbone, create_clip, uses_quick_gelu
from .tag_decoder import MultiLabelHead, TagDecoder
from .text import TagPromptLearner, TextEncoder, get_tokenizer
from ..options import TINY_VIT

MODEL_KIND = PRETRAIN_KIND
MAX_LOGIT_SCALE = math.log(100.0)
INIT_LOGIT_SCALE = math.log(1 / 0.07)


class MosmosPretrainModel(nn.Module):
    """``forward(images, report_tokens)`` -> dict with image_features (B, C), report_features
    (B, C), logit_scale (the multiplier 1/tau), tag_logits (B, Q), pixel_tag_maps (B, Q, N) and
    grid (h, w) of the maps.

    ``weights`` loads CLIP weights into the encoders (see ``create_clip``); the temperature always
    starts at tau = 0.07 (the paper's initialisation), also when CLIP weights are loaded.

    Args:
        backbone: the CLIP backbone (mosmos.options.BACKBONES).
        tags: the pre-training tags (queries).
        weights: CLIP weights: a file or an open_clip tag; None: random.
        quick_gelu: QuickGELU activations (None: as the weights need).
        n_ctx: learnt prompt context tokens.
        n_tag_tokens: tokens kept of a tag's name.
        decoder_depth: tag decoder layers.
        decoder_heads: tag decoder attention heads.
        decoder_self_attn: self-attention among the tag queries.
    """

    def __init__(self, backbone: str = TINY_VIT, tags: Sequence[str] = PRETRAIN_TAGS,
                 weights: str | os.PathLike | None = None, *, quick_gelu: bool | None = None,
                 n_ctx: int = 16, n_tag_tokens: int = 10, decoder_depth: int = 1,
                 decoder_heads: int = 8, decoder_self_attn: bool = False):
        super().__init__()
        backbone = canonical_backbone(backbone)
        tags = [str(t) for t in tags]
        if not tags:
            raise MosmosError("tags: at least one organ name is needed")
        clip = create_clip(backbone, weights, quick_gelu=quick_gelu)
        self.image_encoder = ImageEncoder(clip.visual)
        self.text_encoder = TextEncoder(clip)
        self.tag_prompt = TagPromptLearner(self.text_encoder, get_tokenizer(backbone), n_ctx, n_tag_tokens)
        dim = self.image_encoder.output_dim
        self.tag_decoder = TagDecoder(dim, depth=decoder_depth, heads=decoder_heads,
                                      self_attn=decoder_self_attn)
        self.head = MultiLabelHead(dim)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.tags = tags
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "tags": list(tags),
            "embed_dim": dim,
            "image_size": self.image_encoder.image_size,
            "context_length": self.text_encoder.context_length,
            "mean": list(OPENAI_DATASET_MEAN),
            "std": list(OPENAI_DATASET_STD),
            "quick_gelu": uses_quick_gelu(clip),
            "n_ctx": n_ctx,
            "n_tag_tokens": n_tag_tokens,
            "decoder_depth": decoder_depth,
            "decoder_heads": decoder_heads,
            "decoder_self_attn": decoder_self_attn,
        }

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    @property
    def tokenizer(self):
        return get_tokenizer(self.config["backbone"])

    def tokenize(self, reports: Sequence[str]) -> torch.Tensor:
        """Reports -> token ids (B, 77) on the model's device."""
        return self.tokenizer(list(reports)).to(self.logit_scale.device)

    def encode_tags(self, tags: Sequence[str] | None = None) -> torch.Tensor:
        """Tag features (Q, C) for ``tags`` (default: the model's tags); any organ names work."""
        return self.tag_prompt(self.tags if tags is None else list(tags))

    def forward(self, images: torch.Tensor, report_tokens: torch.Tensor) -> dict[str, Any]:
        image_features, spatial, grid = self.image_encoder(images)
        report_features = self.text_encoder.encode_reports(report_tokens)
        f_ts, maps = self.tag_decoder(self.encode_tags(), spatial)
        return {
            "image_features": image_features,
            "report_features": report_features,
            # CLIP convention: tau may not drop below 0.01.
            "logit_scale": self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp(),
            "tag_logits": self.head(f_ts),
            "pixel_tag_maps": maps,
            "grid": grid,
        }

    # --- model files -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MosmosPretrainModel":
        """A randomly initialised model with the architecture ``config`` describes."""
        try:
            return cls(config["backbone"], config["tags"], quick_gelu=config["quick_gelu"],
                       n_ctx=config["n_ctx"], n_tag_tokens=config["n_tag_tokens"],
                       decoder_depth=config["decoder_depth"], decoder_heads=config["decoder_heads"],
                       decoder_self_attn=config["decoder_self_attn"])
        except (KeyError, TypeError) as e:
            raise MosmosError(f"model config: missing or invalid entry {e}") from None

    def to_file_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, header) for ``mosmos.files.modelfile.save_model``; add provenance to the header freely."""
        tensors = {k: v.detach() for k, v in self.state_dict().items()}
        return tensors, {"kind": MODEL_KIND, "config": dict(self.config)}

    def save(self, path: str | os.PathLike, **header: Any) -> None:
        tensors, base = self.to_file_state()
        save_model(path, tensors, {**base, **header})

    @classmethod
    def from_file_state(cls, tensors: dict[str, torch.Tensor], header: dict[str, Any],
                        source: str = "model") -> "MosmosPretrainModel":
        if header.get("kind") != MODEL_KIND:
            raise MosmosError(f"{source}: not a MOSMOS pre-training model (kind {header.get('kind')!r})")
        model = cls.from_config(header.get("config") or {})
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise MosmosError(f"{source}: weights do not match the model config "
                              f"({str(e).strip().splitlines()[0]})") from None
        return model

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "MosmosPretrainModel":
        tensors, header = load_model(path)
        return cls.from_file_state(tensors, header, source=str(path))

    from_pretrained_file = from_file
