"""CLIP backbones built through open_clip, and the image encoder that exposes spatial features.

Models are always instantiated with ``pretrained=None``; real weights come from a local file
(open_clip state dict or OpenAI's released TorchScript archive) or, on machines with internet,
from an open_clip pretrained tag such as ``"openai"``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import zipfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from ..errors import MosmosError
from ..options import BACKBONES, CPU, canonical_backbone  # noqa: F401  (BACKBONES: for this module's readers)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

# TorchScript archives carry these non-weight entries in their state dicts (OpenAI's the first
# three; traced open_clip models also their causal mask).
_TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _register_configs() -> None:
    # open_clip.add_model_config appends without looking, and has no public list of the folders it reads:
    # reading its private list keeps a re-imported module (tests, Slicer's reload) from adding the folder twice.
    if CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)


_register_configs()


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True for a TorchScript archive (what OpenAI released), which ``torch.load`` cannot read safely."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def uses_quick_gelu(clip: nn.Module) -> bool:
    """Whether a built model uses QuickGELU (OpenAI weights were trained with it)."""
    return any(isinstance(m, QuickGELU) for m in clip.modules())


def create_clip(name: str, weights: str | os.PathLike | None = None,
                quick_gelu: bool | None = None) -> nn.Module:
    """Build an open_clip CLIP for ``name`` and optionally load ``weights``.

    ``weights``: None (random init), a local file (open_clip state dict .bin/.pt/.pth/.safetensors,
    or an OpenAI TorchScript .pt), or an open_clip pretrained tag (downloads). ``quick_gelu``:
    None picks QuickGELU exactly when the weights were trained with it (OpenAI files and tags).
    """
    name = canonical_backbone(name)
    path = Path(weights) if weights is not None and os.path.isfile(weights) else None
    if weights is None or path is not None:
        torchscript = path is not None and is_torchscript_file(path)
        gelu = quick_gelu if quick_gelu is not None else torchscript
        with _quiet_random_init():
            clip = open_clip.create_model(name, pretrained=None, force_quick_gelu=gelu)
        if path is not None:
            _load_file(clip, path, torchscript, name)
        return clip
    return _create_from_tag(name, str(weights), quick_gelu)


@contextlib.contextmanager
def _quiet_random_init():
    """open_clip warns on every randomly initialised model; here that is the intended state
    (weights, if any, are loaded right after), so the warning would only mislead users."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    logging.root.addFilter(keep)
    try:
        yield
    finally:
        logging.root.removeFilter(keep)


def _create_from_tag(name: str, tag: str, quick_gelu: bool | None) -> nn.Module:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg and (os.sep in tag or "/" in tag or Path(tag).suffix in _WEIGHT_SUFFIXES):
        raise MosmosError(f"{tag}: weights file not found")
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise MosmosError(f"weights '{tag}': not a file nor an open_clip pretrained tag for {name} "
                          f"(tags: {', '.join(tags) or 'none'})")
    gelu = quick_gelu if quick_gelu is not None else bool(cfg.get("quick_gelu", False))
    try:
        clip = open_clip.create_model(name, pretrained=tag, force_quick_gelu=gelu)
    except RuntimeError as e:
        raise MosmosError(f"weights '{tag}': download or load failed ({e})") from None
    return clip


def _load_file(clip: nn.Module, path: Path, torchscript: bool, name: str) -> None:
    try:
        if torchscript:
            archive = torch.jit.load(str(path), map_location=CPU)
            state = {k: v for k, v in archive.state_dict().items() if k not in _TORCHSCRIPT_EXTRA_KEYS}
            clip.load_state_dict(state, strict=True)
        else:
            open_clip.load_checkpoint(clip, str(path), strict=True, weights_only=True)
    except pickle.UnpicklingError:
        raise MosmosError(f"{path}: holds Python objects besides tensors; refusing to unpickle it "
                          f"(save a plain state dict or safetensors file)") from None
    except (RuntimeError, ValueError, OSError, EOFError, StopIteration) as e:
        raise MosmosError(f"{path}: cannot load as {name} CLIP weights ({_brief(e)})") from None
    except KeyError:
        # torch.load reports a file that is no pickle/zip at all as a KeyError of a byte value.
        raise MosmosError(f"{path}: not a weights file (unreadable)") from None


def _brief(e: Exception, limit: int = 300) -> str:
    """One line from a possibly multi-line exception message (load_state_dict lists every key)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ImageEncoder(nn.Module):
    """CLIP image tower returning the global feature f^G (B, C), spatial features f^S (B, N, C)
    and the spatial grid (h, w), with N = h * w and C the CLIP embedding dimension.

    ViT: patch tokens after ``ln_post`` projected with the CLIP projection (class token dropped).
    ModifiedResNet: dense features through the attention pool's value and output projections
    (DenseCLIP), global = the usual attention-pool output. Positional embeddings are interpolated
    when the input size differs from the configured one.

    Args:
        visual: an open_clip CLIP's image tower (VisionTransformer or ModifiedResNet).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        if isinstance(visual, VisionTransformer):
            if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
                raise MosmosError("image tower: only class-token ViTs are supported")
            self.kind = "vit"
        elif isinstance(visual, ModifiedResNet):
            self.kind = "rn"
        else:
            raise MosmosError(f"image tower: unsupported type {type(visual).__name__}")
        self.visual = visual

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    @property
    def image_size(self) -> int:
        size = self.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        return self._vit(images) if self.kind == "vit" else self._resnet(images)

    def _vit(self, images):
        v = self.visual
        x = v.conv1(images)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + _grid_pos_embed(v.positional_embedding, v.grid_size, (h, w)).to(x.dtype)
        x = v.transformer(v.ln_pre(x))
        x = v.ln_post(x) @ v.proj
        return x[:, 0], x[:, 1:], (int(h), int(w))

    def _resnet(self, images):
        v = self.visual
        x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        pool = v.attnpool
        side = round(math.sqrt(pool.positional_embedding.shape[0] - 1))
        x = x + _grid_pos_embed(pool.positional_embedding, (side, side), (h, w)).to(x.dtype)
        # Only the mean token's query is needed for the global feature (the rest of the pool's
        # attention output is discarded by CLIP anyway).
        heads = pool.num_heads
        b, n, c = x.shape
        q = pool.q_proj(x[:, :1]).view(b, 1, heads, c // heads).transpose(1, 2)
        k = pool.k_proj(x).view(b, n, heads, c // heads).transpose(1, 2)
        values = pool.v_proj(x)
        vh = values.view(b, n, heads, c // heads).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, vh).transpose(1, 2).reshape(b, c)
        return pool.c_proj(pooled), pool.c_proj(values[:, 1:]), (int(h), int(w))


def _grid_pos_embed(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Positional embedding (1 + h*w, W) for ``new_grid``; the first (class/mean) row is kept."""
    grid, new_grid = tuple(int(g) for g in grid), tuple(int(g) for g in new_grid)
    if grid == new_grid:
        return pos
    first, rest = pos[:1], pos[1:]
    rest = rest.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    rest = F.interpolate(rest.float(), size=new_grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([first, rest.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)], dim=0)
