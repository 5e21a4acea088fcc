"""Query2Label-style tag decoder: tag features attend to spatial image features.

Besides the updated queries f^TS, the decoder returns pixel-tag maps f^M: the last layer's
cross-attention scores (scaled dot products before the softmax, averaged over heads), which are
of order 1 and are what fine-tuning supervises with L_pta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention that can also return its pre-softmax scores, averaged over heads."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, return_scores: bool = False):
        q, k, v = self._split(self.q(query)), self._split(self.k(memory)), self._split(self.v(memory))
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.out(out.transpose(1, 2).flatten(2))
        if not return_scores:
            return out, None
        # The fused kernel does not expose its scores; with few queries recomputing them is cheap.
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return out, scores.mean(dim=1)


class TagDecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, self_attn: bool):
        super().__init__()
        self.self_attn = Attention(dim, heads) if self_attn else None
        self.norm_self = nn.LayerNorm(dim) if self_attn else None
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, return_scores: bool):
        if self.self_attn is not None:
            y = self.norm_self(x)
            x = x + self.self_attn(y, y)[0]
        out, scores = self.cross_attn(self.norm_q(x), self.norm_kv(memory), return_scores)
        x = x + out
        x = x + self.mlp(self.norm_mlp(x))
        return x, scores


class TagDecoder(nn.Module):
    """``forward(queries (Q, C) or (B, Q, C), memory (B, N, C)) -> (f_ts (B, Q, C), maps (B, Q, N))``.

    Self-attention among the queries is off by default so that a tag's prediction does not depend
    on which other tags are asked for (tag sets are chosen freely at inference).

    Args:
        dim: the embedding dimension C.
        depth: decoder layers.
        heads: attention heads.
        mlp_ratio: the MLP's hidden size over ``dim``.
        self_attn: self-attention among the queries.
    """

    def __init__(self, dim: int, depth: int = 1, heads: int = 8, mlp_ratio: float = 4.0,
                 self_attn: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(TagDecoderLayer(dim, heads, mlp_ratio, self_attn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        x, scores = queries.to(memory.dtype), None
        for i, layer in enumerate(self.layers):
            x, scores = layer(x, memory, return_scores=i == len(self.layers) - 1)
        return self.norm(x), scores


class MultiLabelHead(nn.Module):
    """One linear scorer shared by all tags, so any number of (open-set) tags can be scored."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, f_ts: torch.Tensor) -> torch.Tensor:
        return self.fc(f_ts).squeeze(-1)
