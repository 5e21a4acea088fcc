"""CLIP text tower: report encoding and CoOp-style tag prompts.

A tag (any organ name, open set) is embedded as [SOS] + N1 learnable context vectors shared by
all tags + up to N2 tag tokens + [EOS], run through the CLIP text transformer with its causal
mask, and read out at [EOS].
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import open_clip
import torch
from open_clip.transformer import text_global_pool
from torch import nn

from ..errors import MosmosError
from .backbones import canonical_backbone

CONTEXT_LENGTH = 77


@functools.lru_cache(maxsize=None)
def get_tokenizer(backbone: str):
    """The open_clip tokenizer of a backbone (the bundled BPE for every supported one)."""
    return open_clip.get_tokenizer(canonical_backbone(backbone), context_length=CONTEXT_LENGTH)


class TextEncoder(nn.Module):
    """The text tower of an open_clip ``CLIP``, taken over (not copied) from it.

    Args:
        clip: an open_clip CLIP model whose text tower this takes.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.pool_type = clip.text_pool_type
        self.eos_id = getattr(clip, "text_eos_id", None)
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    @property
    def width(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @property
    def output_dim(self) -> int:
        p = self.text_projection
        return p.out_features if isinstance(p, nn.Linear) else p.shape[1]

    def _contextualize(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, W), L <= context length -> final-layer token features."""
        n = x.shape[1]
        if n > self.context_length:
            raise MosmosError(f"text: {n} tokens exceed the context length {self.context_length}")
        dtype = self.transformer.get_cast_dtype()
        x = x.to(dtype) + self.positional_embedding[:n].to(dtype)
        # Slicing the causal mask keeps every position's view identical to a full-length pass.
        mask = self.attn_mask[:n, :n] if self.attn_mask is not None else None
        return self.ln_final(self.transformer(x, attn_mask=mask))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        p = self.text_projection
        if p is None:
            return x
        return p(x) if isinstance(p, nn.Linear) else x @ p

    def encode_reports(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokenised reports (B, 77) -> report features (B, C)."""
        x = self._contextualize(self.token_embedding(tokens))
        return self._project(text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id))

    def encode_embeddings(self, embeddings: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, L, W) with the [EOS] position of each row -> features (B, C)."""
        x = self._contextualize(embeddings)
        return self._project(x[torch.arange(x.shape[0], device=x.device), eos_index])


class TagPromptLearner(nn.Module):
    """CoOp tag embeddings: ``forward(tag_names) -> (Q, C)`` for any organ names.

    The text encoder is used, not owned: it belongs to the enclosing model, and registering it
    here too would store its weights twice in state dicts. Move both together between devices.

    Args:
        text_encoder: the TextEncoder the prompts go through.
        tokenizer: the backbone's open_clip tokenizer.
        n_ctx: learnt context tokens before the tag's name.
        n_tag_tokens: tokens kept of a tag's name.
    """

    def __init__(self, text_encoder: TextEncoder, tokenizer: Callable[..., torch.Tensor], n_ctx: int = 16, n_tag_tokens: int = 10):
        super().__init__()
        self._text = (text_encoder,)
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_tag_tokens = n_tag_tokens
        if n_ctx + n_tag_tokens + 2 > text_encoder.context_length:
            raise MosmosError(f"tag prompt: {n_ctx} context + {n_tag_tokens} tag tokens do not fit "
                              f"the text context of {text_encoder.context_length}")
        self.ctx = nn.Parameter(torch.randn(n_ctx, text_encoder.width) * 0.02)

    @property
    def text_encoder(self) -> TextEncoder:
        return self._text[0]

    def token_ids(self, tag_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (Q, L) with zero placeholders for the context, and each row's [EOS] index."""
        length = self.n_ctx + self.n_tag_tokens + 2
        ids = torch.zeros(len(tag_names), length, dtype=torch.long)
        eos = torch.zeros(len(tag_names), dtype=torch.long)
        sot, eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        for i, name in enumerate(tag_names):
            toks = self.tokenizer.encode(str(name))[: self.n_tag_tokens]
            if not toks:
                raise MosmosError(f"tag '{name}': empty organ name")
            row = [sot] + [0] * self.n_ctx + toks + [eot]
            ids[i, : len(row)] = torch.tensor(row)
            eos[i] = len(row) - 1
        return ids, eos

    def forward(self, tag_names: Sequence[str]) -> torch.Tensor:
        if len(tag_names) == 0:
            raise MosmosError("tags: at least one organ name is needed")
        text = self.text_encoder
        ids, eos = self.token_ids(tag_names)
        ids, eos = ids.to(self.ctx.device), eos.to(self.ctx.device)
        emb = text.token_embedding(ids)
        ctx = self.ctx.to(emb.dtype).expand(len(tag_names), -1, -1)
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx:]], dim=1)
        return text.encode_embeddings(emb, eos)
