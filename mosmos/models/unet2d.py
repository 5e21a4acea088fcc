"""MOSMOS-U-Net: the CLIP ModifiedResNet (RN50) stages as a 2D U-Net encoder (docs/method.md).

The stem's first convolution reads the input channels through the summed RGB kernels. The tag
decoder reads the last stage's dense features, projected to the joint space C through the
attention pool's value and output projections (DenseCLIP, as ImageEncoder does in pre-training);
its pixel–tag maps are concatenated to the last stage before a U-Net decoder with skip connections
from the stem and each stage, and (unless maps_at_output is False: the paper's decoder) up-sampled to
the last decoder features before the output block, as in MOSMOS-UNETR.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import UnetrBasicBlock, UnetrUpBlock
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from ..errors import MosmosError
from .backbones import _grid_pos_embed, canonical_backbone, create_clip, uses_quick_gelu
from .segbase import (TagQueries, freeze_unused_decoder_parts, output_block, spread_rgb_weight, split_pretrain_state,
                      with_maps)
from .tag_decoder import TagDecoder
from ..options import RN50, UNET2D

STRIDE = 32


class MosmosUNet2D(nn.Module):
    """forward(x (B, in_channels, H, W)) -> (logits (B, num_classes, H, W), maps (B, num_classes, H/32, W/32)).

    num_classes counts the background; tag embeddings (num_classes - 1, C) are set with
    set_tag_embeddings. H and W must be multiples of 32. maps_at_output: as in MosmosUNETR.

    Args:
        num_classes: classes, background included.
        backbone: the CLIP ResNet backbone (mosmos.options.BACKBONES).
        in_channels: image channels.
        feature_size: channels of the full-resolution decoder stage (doubling at each coarser one).
        norm_name: as in MosmosUNETR.
        decoder_depth: as in MosmosUNETR.
        decoder_heads: as in MosmosUNETR.
        decoder_self_attn: as in MosmosUNETR.
        quick_gelu: as in MosmosUNETR.
        clip_weights: CLIP weights for the ResNet encoder, as in MosmosUNETR.
        maps_at_output: as in MosmosUNETR.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = RN50,
        in_channels: int = 1,
        feature_size: int = 32,
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
        if not isinstance(visual, ModifiedResNet):
            raise MosmosError(f"backbone {backbone}: MOSMOS-U-Net needs a ResNet backbone; use UNETR for ViTs")
        self.config = dict(
            arch=UNET2D, num_classes=num_classes, backbone=backbone, in_channels=in_channels,
            feature_size=feature_size, norm_name=norm_name, decoder_depth=decoder_depth,
            decoder_heads=decoder_heads, decoder_self_attn=decoder_self_attn, quick_gelu=uses_quick_gelu(clip),
            maps_at_output=bool(maps_at_output),
        )
        self.num_classes = num_classes
        pool = visual.attnpool
        dim = pool.c_proj.out_features
        width = visual.conv1.out_channels * 2
        # Only the value/output projections of the attention pool are used (dense features);
        # dropping the rest keeps every parameter in the graph (DDP needs that).
        self.pool_pos = pool.positional_embedding
        self.v_proj, self.c_proj = pool.v_proj, pool.c_proj
        visual.attnpool = None
        rgb_stem = visual.conv1.weight.detach()
        visual.conv1 = nn.Conv2d(in_channels, rgb_stem.shape[0], kernel_size=3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            visual.conv1.weight.copy_(spread_rgb_weight(rgb_stem, in_channels))
        self.encoder = visual

        self.queries = TagQueries(num_classes, dim)
        self.tag_decoder = TagDecoder(dim, depth=decoder_depth, heads=decoder_heads, self_attn=decoder_self_attn)
        freeze_unused_decoder_parts(self.tag_decoder)

        fs = feature_size
        stage_channels = [width, width * 4, width * 8, width * 16]  # stem (1/2), layer1..3 (1/4..1/16)
        self.encoder1 = UnetrBasicBlock(2, in_channels, fs, kernel_size=3, stride=1, norm_name=norm_name,
                                        res_block=True)
        self.skips = nn.ModuleList(
            UnetrBasicBlock(2, c, fs * 2 ** (s + 1), kernel_size=3, stride=1, norm_name=norm_name, res_block=True)
            for s, c in enumerate(stage_channels)
        )
        self.ups = nn.ModuleList()
        in_ch = width * 32 + num_classes
        for level in range(4, -1, -1):
            self.ups.append(UnetrUpBlock(2, in_ch, fs * 2**level, kernel_size=3, upsample_kernel_size=2,
                                         norm_name=norm_name, res_block=True))
            in_ch = fs * 2**level
        self.maps_at_output = bool(maps_at_output)
        self.out = output_block(2, fs, num_classes, self.maps_at_output)

    @torch.no_grad()
    def load_visual(self, visual: ModifiedResNet) -> None:
        """Take the encoder weights from a 2D CLIP ModifiedResNet (stem conv read through summed RGB)."""
        state = {k: v for k, v in visual.state_dict().items() if not k.startswith("attnpool.")}
        state["conv1.weight"] = spread_rgb_weight(state["conv1.weight"], self.encoder.conv1.in_channels)
        self.encoder.load_state_dict(state, strict=True)
        pool = visual.attnpool
        self.pool_pos.copy_(pool.positional_embedding)
        self.v_proj.load_state_dict(pool.v_proj.state_dict())
        self.c_proj.load_state_dict(pool.c_proj.state_dict())

    def load_pretrain_state(self, tensors: dict[str, torch.Tensor], header: dict,
                            source: str = "pre-trained model") -> None:
        """Initialise the encoder and tag decoder from a MOSMOS pre-training model file; build the
        network with ``segbase.pretrain_arch_kwargs(header["config"])`` so the architectures agree."""
        visual_state, decoder_state = split_pretrain_state(tensors, header, self.config, source)
        visual = create_clip(self.config["backbone"], quick_gelu=self.config["quick_gelu"]).visual
        try:
            visual.load_state_dict(visual_state, strict=True)
            self.tag_decoder.load_state_dict(decoder_state, strict=True)
        except RuntimeError as e:
            raise MosmosError(f"{source}: weights do not fit ({str(e).strip().splitlines()[0]})") from None
        self.load_visual(visual)

    def set_tag_embeddings(self, embeddings: torch.Tensor) -> None:
        """Tag embeddings (num_classes - 1, C) from the frozen text encoder, in label order 1..K."""
        self.queries.set_tag_embeddings(embeddings)

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, W, h, w) -> (B, h*w, C) through the attention pool's v/c projections."""
        h, w = x.shape[-2:]
        side = round(math.sqrt(self.pool_pos.shape[0] - 1))
        pos = _grid_pos_embed(self.pool_pos, (side, side), (h, w))[1:]
        return self.c_proj(self.v_proj(x.flatten(2).transpose(1, 2) + pos.to(x.dtype)))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The ResNet stages [stem, layer1, layer2, layer3, layer4] of ``x``."""
        if x.shape[-2] % STRIDE or x.shape[-1] % STRIDE:
            raise MosmosError(f"input of size {tuple(x.shape[-2:])}: each side must be a multiple of {STRIDE}")
        e = self.encoder
        stages = [e.act3(e.bn3(e.conv3(e.act2(e.bn2(e.conv2(e.act1(e.bn1(e.conv1(x)))))))))]
        stages.append(e.layer1(e.avgpool(stages[-1])))
        for layer in (e.layer2, e.layer3, e.layer4):
            stages.append(layer(stages[-1]))
        return stages

    def _maps(self, bottom: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        _, maps = self.tag_decoder(queries, self.dense_features(bottom))
        return maps.reshape(maps.shape[0], maps.shape[1], *bottom.shape[-2:])

    def tag_maps(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Pixel–tag maps (B, Q', h, w) of other queries (open-set tags) on input ``x``."""
        bottom = self.encode(x)[-1]
        return self._maps(bottom, queries.to(bottom.dtype))

    def forward(self, x: torch.Tensor, tag_embeddings: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s1, s2, s3, s4, bottom = self.encode(x)
        maps = self._maps(bottom, self.queries(tag_embeddings))
        skips = [self.encoder1(x)] + [adapt(s) for adapt, s in zip(self.skips, (s1, s2, s3, s4))]
        y = torch.cat([bottom, maps.to(bottom.dtype)], dim=1)
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(y, skip)
        return self.out(with_maps(y, maps) if self.maps_at_output else y), maps
