"""Sliding-window inference with gaussian blending, a progress/cancel callback, a choice of
where the stitched outputs live (the GPU, or the CPU when GPU memory is short), and the body mask
that lets the caller tile only the body's bounding box and skip windows holding no body voxel.

A voxel blends only the windows that were run; one that no run window covers is background (logit
1 for class 0, 0 elsewhere) and its maps take the caller's values (``uncovered_maps``), or the lowest
score of the voxels that were run."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


class Cancelled(Exception):
    """The progress callback asked to stop; nothing was written."""


def window_starts(n: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis (n >= roi): evenly stepped, the last one flush with the end."""
    step = max(1, int(roi * (1.0 - overlap)))
    starts = list(range(0, n - roi + 1, step))
    if starts[-1] != n - roi:
        starts.append(n - roi)
    return starts


def gaussian_importance(roi: Sequence[int], device, sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable gaussian (sigma = roi / 8, as monai's default), peak 1, floor 1e-3 so that window
    borders still count where only one window covers a voxel."""
    out = torch.ones((), device=device)
    for r in roi:
        x = torch.arange(r, device=device, dtype=torch.float32) - (r - 1) / 2.0
        g = torch.exp(-0.5 * (x / (sigma_scale * r)) ** 2)
        out = out[..., None] * g
    return (out / out.max()).clamp_(min=1e-3)


def sliding_window(
    image: torch.Tensor,
    roi: Sequence[int],
    predict: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    num_classes: int,
    num_maps: int,
    overlap: float = 0.5,
    batch_size: int = 1,
    stitch_device: torch.device | str | None = None,
    progress: Callable[[int, int], bool | None] | None = None,
    starts: Sequence[tuple[int, ...]] | None = None,
    uncovered_maps: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Blend ``predict`` over windows of ``image`` (C, X, Y, Z), already on the compute device.

    predict(windows (B, C, *roi)) -> (logits (B, num_classes, *roi), maps (B, num_maps, *roi) or None).
    Returns (logits (num_classes, X, Y, Z), maps (num_maps, X, Y, Z) or None) float32 on
    stitch_device. ``starts``: the windows to run (from plan_windows; default all). The image is
    zero-padded (symmetrically) up to the roi where smaller, and the outputs are cropped back.
    progress(done, total) is called before the first window batch and after each one (over the
    windows run); a False return raises Cancelled. ``uncovered_maps``: per map, its value where no
    run window covers a voxel (None: the map's lowest score where one does).
    """
    stitch_device = torch.device(stitch_device or image.device)
    shape = tuple(image.shape[1:])
    pad = [max(0, r - s) for r, s in zip(roi, shape)]
    if any(pad):
        spec = []
        for p in reversed(pad):
            spec += [p // 2, p - p // 2]
        image = F.pad(image, spec)
    padded = tuple(image.shape[1:])
    starts = plan_windows(shape, roi, overlap) if starts is None else list(starts)
    batches = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    total = len(batches)

    def report(done: int) -> None:
        if progress is not None and progress(done, total) is False:
            raise Cancelled("segmentation cancelled")

    # Every buffer is allocated once: the stitched outputs, the weights and one batch of windows
    # (a fresh stack or product per window made the allocator map and unmap pages per window).
    importance = gaussian_importance(roi, stitch_device)
    logits = torch.zeros((num_classes, *padded), dtype=torch.float32, device=stitch_device)
    maps = torch.zeros((num_maps, *padded), dtype=torch.float32, device=stitch_device) if num_maps else None
    weight = torch.zeros(padded, dtype=torch.float32, device=stitch_device)
    windows = torch.empty((min(batch_size, len(starts)) or 1, image.shape[0], *roi), dtype=image.dtype,
                          device=image.device)
    report(0)
    for done, batch in enumerate(batches, 1):
        regions = [tuple(slice(s, s + r) for s, r in zip(start, roi)) for start in batch]
        for b, reg in enumerate(regions):
            windows[b].copy_(image[(slice(None), *reg)])
        out_logits, out_maps = predict(windows[:len(regions)])
        out_logits = out_logits.to(stitch_device)
        if maps is not None:
            out_maps = out_maps.to(stitch_device)
        for b, reg in enumerate(regions):
            logits[(slice(None), *reg)].addcmul_(out_logits[b], importance)
            if maps is not None:
                maps[(slice(None), *reg)].addcmul_(out_maps[b], importance)
            weight[reg].add_(importance)
        del out_logits, out_maps
        report(done)
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, shape))
    weight = weight[crop]
    uncovered = weight == 0
    weight.masked_fill_(uncovered, 1.0)
    logits = logits[(slice(None), *crop)].div_(weight)
    logits[0].masked_fill_(uncovered, 1.0)
    if maps is not None:
        maps = maps[(slice(None), *crop)].div_(weight)
        if uncovered.any() and (uncovered_maps is not None or not uncovered.all()):
            for k, channel in enumerate(maps):  # outside every window run: the caller's value, or attends least
                fill = uncovered_maps[k] if uncovered_maps is not None else float(channel[~uncovered].min())
                channel.masked_fill_(uncovered, fill)
    return logits, maps


def plan_windows(shape: Sequence[int], roi: Sequence[int], overlap: float, body: torch.Tensor | None = None,
                 block: int = 1) -> list[tuple[int, ...]]:
    """Window starts over ``shape`` (zero-padded up to the roi where smaller, as sliding_window
    pads), keeping only windows that overlap a block of ``body`` (from body_blocks, ``block``
    voxels a side)."""
    pad = [max(0, r - s) for r, s in zip(roi, shape)]
    padded = [s + p for s, p in zip(shape, pad)]
    starts = list(itertools.product(*(window_starts(n, r, overlap) for n, r in zip(padded, roi))))
    if body is None:
        return starts

    def region(start):  # the blocks the window overlaps, in unpadded coordinates
        lo = [max(0, s - p // 2) for s, p in zip(start, pad)]
        hi = [min(n, s - p // 2 + r) for s, p, r, n in zip(start, pad, roi, shape)]
        return tuple(slice(a // block, -(-b // block)) for a, b in zip(lo, hi))

    return [start for start in starts if bool(body[region(start)].any())]


def body_blocks(raw: torch.Tensor, threshold: float, block: int = 4) -> torch.Tensor:
    """Coarse body mask of ``raw`` (1, X, Y, Z, model grid, intensities before scaling; X and Y
    in-plane): bool (ceil(X/block), ...) true where a block holds a voxel above ``threshold``, with
    each axial outline filled (lungs and bowel gas lie inside the body, not outside it)."""
    above = F.max_pool3d(raw[None].float(), block, ceil_mode=True)[0, 0] > threshold
    inside = torch.ones_like(above)
    for dim in (0, 1):
        ahead = above.to(torch.uint8).cummax(dim).values.bool()
        behind = above.flip(dim).to(torch.uint8).cummax(dim).values.flip(dim).bool()
        inside &= ahead & behind
    return above | inside


def body_box(body: torch.Tensor, block: int, shape: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...] | None:
    """The bounding box of ``body`` (from body_blocks) in voxels of ``shape``, on block boundaries,
    grown to the roi where the volume allows (so that no window needs padding that the full volume
    does not); None when there is no body."""
    box = []
    for dim, (n, r) in enumerate(zip(shape, roi)):
        other = [d for d in range(body.dim()) if d != dim]
        hits = torch.nonzero(body.any(dim=other[1]).any(dim=other[0]) if other else body).flatten()
        if hits.numel() == 0:
            return None
        lo, hi = int(hits[0]) * block, min(n, (int(hits[-1]) + 1) * block)
        while hi - lo < min(r, n):  # grow by whole blocks to keep the body-block alignment
            lo, hi = max(0, lo - block), min(n, hi + block)
        box.append(slice(lo, hi))
    return tuple(box)
