"""Pre-training losses: image-report contrast (L_irc) and multi-label recognition (L_mlr)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def irc_loss(image_features: torch.Tensor, text_features: torch.Tensor,
             logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised features; ``logit_scale`` is the multiplier 1/tau
    (already exponentiated, as the model returns it).

    Args:
        image_features: the images' global features (B, C).
        text_features: the reports' features (B, C), paired by row.
        logit_scale: the multiplier 1/tau.
    """
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    logits = logit_scale * img @ txt.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def mlr_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
    """Weak-assume-negative BCE: mean of -(y log p + gamma (1 - y) log(1 - p)), p = sigmoid(logit).

    Reports rarely mention every visible organ, so an absent tag is only a weak negative:
    gamma defaults to 1 / (K - 1) for K tags (1 when there is a single tag).

    Args:
        logits: tag logits (B, K).
        targets: 1 where the report names the tag, else 0 (B, K).
        gamma: the weight of absent tags (None: 1 / (K - 1)).
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    k = logits.shape[-1]
    if gamma is None:
        gamma = 1.0 / (k - 1) if k > 1 else 1.0
    loss = -(targets * F.logsigmoid(logits) + gamma * (1 - targets) * F.logsigmoid(-logits))
    return loss.mean()
