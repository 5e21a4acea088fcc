"""Pieces shared by the fine-tuning networks (MOSMOS-UNETR, MOSMOS-U-Net).

Both networks turn tags into queries the same way: a learnable background query followed by one
embedding per foreground class, computed once by the frozen text encoder (docs/method.md) and kept in
the network as a buffer so that a saved segmentation model needs no text encoder to run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock
from torch import nn

from ..errors import MosmosError
from ..files.modelfile import PRETRAIN_KIND
from ..losses.finetune import EPSILON_INIT, upsample_maps


def spread_rgb_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn a conv weight (O, 3, ...) that reads RGB into one that reads `in_channels` channels.

    The RGB kernels are summed, so a grey image replicated to RGB gives the same response, and the sum
    is spread evenly over the input channels, so identical channels (e.g. BRATS modalities of one
    constant image) also give that response.
    """
    summed = weight.sum(dim=1, keepdim=True)
    return summed.repeat_interleave(in_channels, dim=1) / in_channels


def display_to_ras(t: torch.Tensor) -> torch.Tensor:
    """A grid laid out as a radiological picture (last two axes: rows anterior to posterior, columns
    the patient's right to left, as report images are shown) -> on the RAS voxel axes of an axial
    slice (x: right to left, y: posterior to anterior), so a 2D model's filters and positions keep
    their anatomical meaning in the 3D network."""
    return t.transpose(-2, -1).flip(-1)


def inflate_patch_weight(weight2d: torch.Tensor, in_channels: int, depth: int,
                         mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """2D patch embedding (O, 3, p, p) of a model fed pictures normalised with ``mean``/``std`` ->
    (3D weight (O, in_channels, p, p, depth), bias (O,)) for volumes in [0, 1] on RAS axes.

    The picture's normalisation is folded in and its rows/columns are put on the RAS axes of an axial
    slice (display_to_ras); the kernel is repeated over depth and divided by it. So a [0, 1] volume
    whose axial slices all show one grey picture is embedded exactly as the 2D model embeds that
    picture replicated to RGB and normalised, as its pre-training saw it.
    """
    mean = torch.as_tensor(mean, dtype=weight2d.dtype, device=weight2d.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=weight2d.dtype, device=weight2d.device).view(1, -1, 1, 1)
    per_unit = weight2d / std
    bias = -(per_unit * mean).sum(dim=(1, 2, 3))
    spread = display_to_ras(spread_rgb_weight(per_unit, in_channels))
    return spread.unsqueeze(-1).repeat(*([1] * spread.dim()), depth) / depth, bias


def output_block(spatial_dims: int, features: int, num_classes: int, maps_at_output: bool) -> UnetOutBlock:
    """The 1×1 output convolution; with ``maps_at_output`` it also reads the up-sampled maps (with_maps), its
    weights on them starting as L_pta reads them (class c's logit gets map c / EPSILON_INIT), so the network
    starts from the organs the maps find and its decoder adds the detail."""
    block = UnetOutBlock(spatial_dims, features + (num_classes if maps_at_output else 0), num_classes)
    if maps_at_output:
        with torch.no_grad():
            weight = block.conv.conv.weight
            weight[:, features:] = torch.eye(num_classes).view(num_classes, num_classes, *[1] * spatial_dims) \
                / EPSILON_INIT
    return block


def with_maps(features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The last decoder features (B, F, *S) with the pixel–tag maps up-sampled to them appended (B, F + Q, *S):
    the output block then reads what L_pta trains, at full resolution (README, deviations). The maps are
    detached here: the segmentation loss does not reach them through this path, so they stay what L_pta (and,
    through the bottleneck, the decoder) trains, as in the paper's network."""
    # channels-last features (CPU inference, inference/layout.py) get channels-last maps: the joint tensor
    # stays channels-last, so the output convolution need not reorder it (60 ms of a ViT-B window)
    layout = torch.channels_last_3d if features.dim() == 5 else torch.channels_last
    last = features.is_contiguous(memory_format=layout) and not features.is_contiguous()
    return torch.cat([features, upsample_maps(maps.detach().to(features.dtype), features.shape[2:], last)], dim=1)


def quarter_layers(num_layers: int) -> list[int]:
    """0-based indices of the blocks whose outputs feed the decoder: the evenly spaced quarters of the
    stack (blocks 3/6/9/12 of a 12-block ViT, 1/2/3/4 of a 4-block one), the last one always included."""
    picks = [max(1, round(num_layers * k / 4)) for k in (1, 2, 3, 4)]
    return [p - 1 for p in picks]


class TagQueries(nn.Module):
    """Queries for the tag decoder: [learnable background query] + fixed tag embeddings."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 2:
            raise MosmosError(f"num_classes: need background and at least one organ, got {num_classes}")
        self.num_classes = num_classes
        self.dim = dim
        self.background = nn.Parameter(torch.randn(1, dim) * dim**-0.5)
        # Persistent so the model file carries the embeddings it was trained with.
        self.register_buffer("tag_embeddings", torch.zeros(num_classes - 1, dim))

    def set_tag_embeddings(self, embeddings: torch.Tensor) -> None:
        expected = (self.num_classes - 1, self.dim)
        if tuple(embeddings.shape) != expected:
            raise MosmosError(
                f"tag embeddings: expected shape {expected} (one row per organ class, background excluded), "
                f"got {tuple(embeddings.shape)}"
            )
        self.tag_embeddings.copy_(embeddings.detach().to(self.tag_embeddings))

    def forward(self, tag_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """[background] + ``tag_embeddings`` (the stored ones when None; fine-tuning that learns the prompt
        passes the embeddings of its current context, with their gradient)."""
        tags = self.tag_embeddings if tag_embeddings is None else tag_embeddings
        return torch.cat([self.background, tags.to(self.background.dtype)], dim=0)


def pretrain_arch_kwargs(config: dict) -> dict:
    """Constructor arguments of a fine-tuning network that make it match a MOSMOS pre-training
    model's config (same backbone, activation and tag decoder), so its weights can be loaded."""
    try:
        return dict(backbone=config["backbone"], quick_gelu=bool(config["quick_gelu"]),
                    decoder_depth=int(config["decoder_depth"]), decoder_heads=int(config["decoder_heads"]),
                    decoder_self_attn=bool(config["decoder_self_attn"]))
    except (KeyError, TypeError, ValueError) as e:
        raise MosmosError(f"pre-trained model config: missing or invalid entry {e}") from None


def split_pretrain_state(tensors: dict[str, torch.Tensor], header: dict, net_config: dict,
                         source: str = "pre-trained model") -> tuple[dict, dict]:
    """(CLIP visual state, tag decoder state) from a MOSMOS pre-training model file's tensors.

    The pre-training model keeps them under ``image_encoder.visual.`` and ``tag_decoder.``; its
    prompt learner (``tag_prompt.``) stays with the text side, which computes the tag embeddings.
    """
    if header.get("kind") != PRETRAIN_KIND:
        raise MosmosError(f"{source}: not a MOSMOS pre-training model (kind {header.get('kind')!r})")
    wanted = pretrain_arch_kwargs(header.get("config") or {})
    for key, value in wanted.items():
        if key in net_config and net_config[key] != value:
            raise MosmosError(f"{source}: {key} is {value!r} but the segmentation network uses {net_config[key]!r}")

    def under(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    visual, decoder = under("image_encoder.visual."), under("tag_decoder.")
    if not visual or not decoder:
        raise MosmosError(f"{source}: no image encoder or tag decoder weights in the file")
    return visual, decoder


def freeze_unused_decoder_parts(decoder: nn.Module) -> None:
    """Fine-tuning reads only the pixel–tag maps (the last layer's query/key scores), never f^TS, so
    the last layer's value/output/MLP path and the final norm get no gradient. Freezing them keeps
    every trainable parameter in the graph (DDP without find_unused_parameters) and keeps their
    pre-trained values in saved models."""
    last = decoder.layers[-1]
    for part in (last.cross_attn.v, last.cross_attn.out, last.norm_mlp, last.mlp, decoder.norm):
        part.requires_grad_(False)
