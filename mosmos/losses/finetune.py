"""Fine-tuning losses (docs/method.md): L = L_seg + lambda * L_pta, both Dice + cross-entropy.

L_pta supervises the pixel–tag maps f^M (one per class, background included): divided by a
learnable temperature epsilon (init 0.07) and up-sampled linearly to the label grid, they are
read as class logits. lambda defaults to 0.8 (the paper's text and ablation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss
from torch import nn

_dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
# The temperature L_pta divides the maps by, at the start of fine-tuning (the paper's 0.07; learnt after).
EPSILON_INIT = 0.07


def _with_channel(labels: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    return labels.unsqueeze(1) if labels.dim() == spatial_dims + 1 else labels


def seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dice + CE of logits (B, Q, *S) against class indices (B, 1, *S) or (B, *S)."""
    return _dice_ce(logits, _with_channel(labels, logits.dim() - 2))


def linear_weights(n_in: int, n_out: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_out, n_in): 1D linear interpolation from n_in to n_out samples as F.interpolate computes it
    with align_corners=False (source position (i + 0.5) * n_in / n_out - 0.5, clamped to the ends)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    frac = src - lo
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w[rows, lo] += 1 - frac
    w[rows, (lo + 1).clamp(max=n_in - 1)] += frac
    return w.to(device=device, dtype=dtype)


def upsample_maps(maps: torch.Tensor, size, channels_last: bool = False) -> torch.Tensor:
    """Pixel–tag maps (B, Q, *grid) -> (B, Q, *size), trilinear in 3D, bilinear in 2D: F.interpolate's
    values (align_corners=False), computed as one small matrix product per axis in fp32 whatever the
    input's type (and autocast), returned in it. A ViT-B window's 14 maps from 6^3 to 96^3 take 30 ms
    so on one CPU core against 92 ms (fp32) and 95 ms (bf16) through F.interpolate (issue 18).
    ``channels_last``: the result is laid out channels-last (to join channels-last features)."""
    size = tuple(int(s) for s in size)
    compute = torch.promote_types(maps.dtype, torch.float32)
    out = maps.to(compute)
    first = 2
    if channels_last:  # the classes last: every product below then writes channels-last
        out, first = out.movedim(1, -1), 1
    with torch.autocast(maps.device.type, enabled=False):
        for axis in range(first + maps.dim() - 3, first - 1, -1):  # the last first: the largest product last
            n_in, n_out = out.shape[axis], size[axis - first]
            if n_in == n_out:
                continue
            weights = linear_weights(n_in, n_out, maps.device, compute)
            shape = (*out.shape[:axis], n_out, *out.shape[axis + 1:])
            if axis == out.dim() - 1:
                out = (out.reshape(-1, n_in) @ weights.T).reshape(shape)
            else:
                out = (weights @ out.reshape(math.prod(out.shape[:axis]), n_in, -1)).reshape(shape)
    return (out.movedim(-1, 1) if channels_last else out).to(maps.dtype)


def pta_logits(maps: torch.Tensor, size, epsilon: torch.Tensor | float) -> torch.Tensor:
    """The class logits L_pta reads from the pixel–tag maps: up-sampled to ``size``, divided by epsilon (the
    coarse maps are divided: the same, as up-sampling is linear, in a fraction of the work)."""
    return upsample_maps(maps / epsilon, size)


def pta_probabilities(maps: torch.Tensor, size: Sequence[int], epsilon: torch.Tensor | float) -> torch.Tensor:
    """Per class, the probability that it wins at each voxel, as L_pta trains it: the softmax over
    the classes (background included) of ``pta_logits``. Values in [0, 1], summing to 1 per voxel.

    Args:
        maps: pixel–tag maps (B, classes, *grid), background first.
        size: the spatial size to up-sample to.
        epsilon: the maps' temperature (the learnt epsilon).
    """
    return pta_logits(maps, size, epsilon).softmax(dim=1)


def pta_loss(maps: torch.Tensor, labels: torch.Tensor, epsilon: torch.Tensor | float) -> torch.Tensor:
    """Dice + CE of up-sampled maps / epsilon against the labels (pixel–tag alignment).

    Args:
        maps: pixel–tag maps (B, classes, *grid), background first.
        labels: the label map (B, 1, *size) at the window's size.
        epsilon: the maps' temperature (the learnt epsilon).
    """
    labels = _with_channel(labels, maps.dim() - 2)
    return _dice_ce(pta_logits(maps, labels.shape[2:], epsilon), labels)


class MosmosSegLoss(nn.Module):
    """forward(logits, maps, labels) -> (total, parts); parts = {"seg", "pta", "epsilon"} as detached
    tensors (no device sync here; convert when logging).

    epsilon is a parameter (stored as its log, so it stays positive): put this module's parameters
    in the optimiser alongside the network's.

    Args:
        lambda_pta: the weight of L_pta in L = L_seg + lambda_pta L_pta.
        epsilon: the maps' temperature at the start.
    """

    def __init__(self, lambda_pta: float = 0.8, epsilon: float = EPSILON_INIT):
        super().__init__()
        if epsilon <= 0:
            raise ValueError(f"epsilon {epsilon}: must be positive")
        self.lambda_pta = float(lambda_pta)
        self.log_epsilon = nn.Parameter(torch.tensor(math.log(epsilon)))

    @property
    def epsilon(self) -> torch.Tensor:
        return self.log_epsilon.exp()

    def forward(self, logits: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor):
        l_seg = seg_loss(logits, labels)
        if self.lambda_pta == 0:
            # epsilon then gets no gradient: with DDP, leave this module out of the optimiser.
            return l_seg, {"seg": l_seg.detach(), "pta": torch.zeros_like(l_seg).detach(),
                           "epsilon": self.epsilon.detach()}
        l_pta = pta_loss(maps.float(), labels, self.epsilon)
        total = l_seg + self.lambda_pta * l_pta
        return total, {"seg": l_seg.detach(), "pta": l_pta.detach(), "epsilon": self.epsilon.detach()}
