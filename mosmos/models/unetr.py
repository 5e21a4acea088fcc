"""MOSMOS-UNETR: the CLIP ViT as a 3D UNETR encoder, guided by pixel–tag maps (docs/method.md).

The 2D CLIP patch embedding is inflated to 3D (RGB summed, repeated over the depth of a patch and
divided by it), the 2D positional grid is interpolated to the 3D token grid (class token dropped),
and the outputs of the quarter blocks feed monai's UNETR decoder blocks. The tag decoder reads the
final tokens (after CLIP's ln_post and projection to the joint embedding space C) and its pixel–tag
maps, one per class, are concatenated to the bottleneck before the image decoder (the paper) and,
up-sampled, to the last decoder features before the output block (ours: with few steps the decoder
otherwise loses the organs the maps find; README, deviations).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetResBlock
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from ..errors import MosmosError
from .backbones import canonical_backbone, create_clip, uses_quick_gelu
from .segbase import (TagQueries, display_to_ras, freeze_unused_decoder_parts, inflate_patch_weight, output_block,
                      quarter_layers, split_pretrain_state, with_maps)
from .tag_decoder import TagDecoder
from ..options import UNETR, VIT_B_16


RANDOM_INIT_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the identity: nothing folded in


def interpolate_pos_grid(pos2d: torch.Tensor, grid2d: Sequence[int], grid3d: Sequence[int]) -> torch.Tensor:
    """CLIP positional embedding (1 + g0*g1, W) -> (1, W, h, w, d) on the 3D token grid.

    The class-token row is dropped; the 2D grid (a picture's rows and columns) is put on the RAS
    axes of an axial slice, resized in-plane and repeated along depth.
    """
    width = pos2d.shape[-1]
    patches = display_to_ras(pos2d[1:].reshape(grid2d[0], grid2d[1], width).permute(2, 0, 1))
    return F.interpolate(patches[None, ..., None], size=tuple(grid3d), mode="trilinear", align_corners=False)


class MosmosUNETR(nn.Module):
    """UNETR with a CLIP ViT encoder and pixel–tag maps at the bottleneck.

    num_classes counts the background: the queries are [background] + one tag embedding per organ,
    set with set_tag_embeddings((num_classes - 1, C)). maps_at_output: the maps, up-sampled, also join the
    last decoder features before the output block (segbase.with_maps); False is the paper's decoder.
    forward(x (B, in_channels, H, W, D)) returns
    (logits (B, num_classes, H, W, D), pixel_tag_maps (B, num_classes, H/p, W/p, D/p)).

    Args:
        num_classes: classes, background included.
        backbone: the CLIP ViT backbone (mosmos.options.BACKBONES).
        img_size: the window size (one number: a cube).
        in_channels: image channels.
        feature_size: channels of the decoder's first stage, as MONAI UNETR's.
        norm_name: the decoder's normalisation ("instance", "batch").
        decoder_depth: tag decoder layers.
        decoder_heads: tag decoder attention heads.
        decoder_self_attn: self-attention among the tag queries.
        quick_gelu: QuickGELU activations (None: as the weights need).
        clip_weights: CLIP weights for the encoder (a file or an open_clip tag); None: random.
        maps_at_output: the maps also join the last decoder features (False: the paper's decoder).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = VIT_B_16,
        img_size: int | Sequence[int] = 96,
        in_channels: int = 1,
        feature_size: int = 16,
        norm_name: str = "instance",
        decoder_depth: int = 1,
        decoder_heads: int = 8,
        decoder_self_attn: bool = False,
        quick_gelu: bool | None = None,
        clip_weights: str | None = None,
        maps_at_output: bool = True,
    ):
        super().__init__()
        backbone = canonical_backbone(backbone)
        clip = create_clip(backbone, weights=clip_weights, quick_gelu=quick_gelu)
        visual = clip.visual
        if not hasattr(visual, "transformer"):
            raise MosmosError(f"backbone {backbone}: MOSMOS-UNETR needs a ViT backbone; use the 2D U-Net for ResNets")
        patch = visual.patch_size[0]
        levels = int(round(math.log2(patch)))
        if 2**levels != patch or levels < 2:
            raise MosmosError(f"backbone {backbone}: patch size {patch} is not a power of two >= 4")
        self.img_size = tuple(int(s) for s in (img_size if isinstance(img_size, Sequence) else (img_size,) * 3))
        for s in self.img_size:
            if s % patch:
                raise MosmosError(f"roi size {self.img_size}: each side must be a multiple of the patch size {patch}")
        self.config = dict(
            arch=UNETR, num_classes=num_classes, backbone=backbone, img_size=list(self.img_size),
            in_channels=in_channels, feature_size=feature_size, norm_name=norm_name,
            decoder_depth=decoder_depth, decoder_heads=decoder_heads, decoder_self_attn=decoder_self_attn,
            quick_gelu=uses_quick_gelu(clip), maps_at_output=bool(maps_at_output),
        )
        self.patch = patch
        self.grid2d = tuple(visual.grid_size)
        self.token_grid = tuple(s // patch for s in self.img_size)
        width = visual.conv1.out_channels
        dim = visual.proj.shape[1]
        self.hidden_size = width
        self.num_classes = num_classes

        self.patch_embed = nn.Conv3d(in_channels, width, kernel_size=patch, stride=patch, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, width, *self.token_grid))
        self.ln_pre = visual.ln_pre
        self.blocks = visual.transformer.resblocks
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        # Random weights were fed nothing: no picture normalisation to fold in (its offset, large against
        # the positional embedding, would make every token alike after ln_pre).
        mean, std = (OPENAI_DATASET_MEAN, OPENAI_DATASET_STD) if clip_weights else RANDOM_INIT_NORMALISATION
        self.load_visual(visual, mean, std)
        self.taps = quarter_layers(len(self.blocks))[:3]

        self.queries = TagQueries(num_classes, dim)
        self.tag_decoder = TagDecoder(dim, depth=decoder_depth, heads=decoder_heads, self_attn=decoder_self_attn)
        freeze_unused_decoder_parts(self.tag_decoder)

        fs = feature_size
        self.encoder1 = UnetrBasicBlock(3, in_channels, fs, kernel_size=3, stride=1, norm_name=norm_name,
                                        res_block=True)
        # Skip level s lives at 1/2^s of the input; the three shallow taps feed levels 1..3, deeper
        # levels (patch 32) have no tap and are reached by plain up-sampling.
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(3, width, fs * 2**s, num_layer=levels - s - 1, kernel_size=3, stride=1,
                           upsample_kernel_size=2, norm_name=norm_name, conv_block=True, res_block=True)
            for s in range(1, min(levels, 4))
        )
        self.ups = nn.ModuleList()
        in_ch = width + num_classes
        for s in range(levels - 1, -1, -1):
            out_ch = fs * 2**s
            if s <= len(self.skips):
                self.ups.append(UnetrUpBlock(3, in_ch, out_ch, kernel_size=3, upsample_kernel_size=2,
                                             norm_name=norm_name, res_block=True))
            else:
                self.ups.append(nn.Sequential(
                    UnetrPrUpBlock(3, in_ch, out_ch, num_layer=0, kernel_size=3, stride=1,
                                   upsample_kernel_size=2, norm_name=norm_name),
                    UnetResBlock(3, out_ch, out_ch, kernel_size=3, stride=1, norm_name=norm_name),
                ))
            in_ch = out_ch
        self.maps_at_output = bool(maps_at_output)
        self.out = output_block(3, fs, num_classes, self.maps_at_output)

    @torch.no_grad()
    def load_visual(self, visual: nn.Module, mean: Sequence[float] = OPENAI_DATASET_MEAN,
                    std: Sequence[float] = OPENAI_DATASET_STD) -> None:
        """Take the encoder weights from a 2D CLIP VisionTransformer fed pictures normalised with
        ``mean``/``std`` (inflating what is 2D, see inflate_patch_weight), for [0, 1] volumes."""
        in_channels = self.patch_embed.in_channels
        weight, bias = inflate_patch_weight(visual.conv1.weight, in_channels, self.patch, mean, std)
        self.patch_embed.weight.copy_(weight)
        grid2d = tuple(visual.grid_size)
        # The normalisation's offset is the same for every token: it joins the positional embedding,
        # so the network (and its model files) keep a bias-free patch embedding.
        self.pos_embed.copy_(interpolate_pos_grid(visual.positional_embedding, grid2d, self.token_grid)
                             + bias.view(1, -1, 1, 1, 1))
        if visual.ln_pre is not self.ln_pre:
            self.ln_pre.load_state_dict(visual.ln_pre.state_dict())
            self.blocks.load_state_dict(visual.transformer.resblocks.state_dict())
            self.ln_post.load_state_dict(visual.ln_post.state_dict())
            self.proj.copy_(visual.proj)

    def load_pretrain_state(self, tensors: dict[str, torch.Tensor], header: dict,
                            source: str = "pre-trained model") -> None:
        """Initialise the encoder and tag decoder from a MOSMOS pre-training model file
        (``mosmos.files.modelfile.load_model`` output); build the network with
        ``segbase.pretrain_arch_kwargs(header["config"])`` so the architectures agree."""
        visual_state, decoder_state = split_pretrain_state(tensors, header, self.config, source)
        visual = create_clip(self.config["backbone"], quick_gelu=self.config["quick_gelu"]).visual
        try:
            visual.load_state_dict(visual_state, strict=True)
            self.tag_decoder.load_state_dict(decoder_state, strict=True)
        except RuntimeError as e:
            raise MosmosError(f"{source}: weights do not fit ({str(e).strip().splitlines()[0]})") from None
        config = header.get("config") or {}
        self.load_visual(visual, config.get("mean", OPENAI_DATASET_MEAN), config.get("std", OPENAI_DATASET_STD))

    def set_tag_embeddings(self, embeddings: torch.Tensor) -> None:
        """Tag embeddings (num_classes - 1, C) from the frozen text encoder, in label order 1..K."""
        self.queries.set_tag_embeddings(embeddings)

    def _positions(self, grid: tuple[int, ...]) -> torch.Tensor:
        if grid == tuple(self.pos_embed.shape[2:]):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=grid, mode="trilinear", align_corners=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, ...]]:
        """Tokens after the last block (B, N, W), the tapped hidden states, and the token grid."""
        for s, p in zip(x.shape[2:], (self.patch,) * 3):
            if s % p:
                raise MosmosError(f"input of size {tuple(x.shape[2:])}: each side must be a multiple of {p}")
        with torch.autocast(x.device.type, enabled=False):  # fp32 even under autocast: see pixel_tag_maps
            tokens = self.patch_embed(x.float())
        grid = tuple(tokens.shape[2:])
        tokens = (tokens + self._positions(grid).to(tokens.dtype)).flatten(2).transpose(1, 2)
        tokens = self.ln_pre(tokens)
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        taps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.taps:
                taps.append(tokens if self.batch_first else tokens.transpose(0, 1))
        if not self.batch_first:
            tokens = tokens.transpose(0, 1)
        return tokens, taps, grid

    def pixel_tag_maps(self, tokens: torch.Tensor, grid: tuple[int, ...],
                       queries: torch.Tensor | None = None) -> torch.Tensor:
        # The maps are computed in fp32 even under bf16 autocast, and so is the patch embedding (encode),
        # which keeps the ViT's residual stream fp32 (only the blocks' matrix products run in bf16): both
        # cost little, and bf16 rounding there, amplified by 1/epsilon in the overlays' softmax, moved
        # the demo model's overlays by 2.2e-2 (4.4e-3 with both in fp32; issue 18).
        with torch.autocast(tokens.device.type, enabled=False):
            memory = self.ln_post(tokens.float()) @ self.proj
            _, maps = self.tag_decoder(self.queries() if queries is None else queries, memory)
        return maps.reshape(maps.shape[0], maps.shape[1], *grid)

    def tag_maps(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Pixel–tag maps (B, Q', h, w, d) of other queries (open-set tags) on input ``x``."""
        tokens, _, grid = self.encode(x)
        return self.pixel_tag_maps(tokens, grid, queries.to(tokens.dtype))

    def forward(self, x: torch.Tensor, tag_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, taps, grid = self.encode(x)
        maps = self.pixel_tag_maps(tokens, grid, self.queries(tag_embeddings))

        def as_volume(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

        skips = [self.encoder1(x)] + [enc(as_volume(t)) for enc, t in zip(self.skips, taps)]
        y = torch.cat([as_volume(tokens), maps.to(tokens.dtype)], dim=1)
        for level, up in zip(range(len(self.ups) - 1, -1, -1), self.ups):
            y = up(y, skips[level]) if level < len(skips) else up(y)
        return self.out(with_maps(y, maps) if self.maps_at_output else y), maps
