"""Sliding-window inference with gaussian blending, a progress/cancel callback, a choice of
where the stitched outputs live (the GPU, or the CPU when GPU memory is short), and the body mask
that lets the caller tile only the body's bounding box and skip windows holding no body voxel.

A voxel blends only the windows that were run; one that no run window covers is background (logit
1 for class 0, 0 elsewhere) and its maps take the caller's values (``uncovered_maps``), or the lowest
score of the voxels that were run.

The blend is stitched slab by slab along the volume's longest axis: the windows run in order of
their start there, and a slab no window left to run can reach is final, handed to the caller and its
buffer reused. The buffers hold one window's depth of that axis, not the whole volume: for a
512x512x300 CT (a 274x274x375 model grid, 14 classes) 0.4 GB of class scores instead of 1.6 GB.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


class Cancelled(Exception):
    """The progress callback asked to stop; nothing was written."""


# on_slab(where, logits (K, *slab), maps (M, *slab) or None, uncovered (*slab) bool): a finished slab
# of the blend, ``where`` its three slices of the volume; views valid only during the call.
SlabSink = Callable[[tuple[slice, ...], torch.Tensor, "torch.Tensor | None", torch.Tensor], None]


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
    on_slab: SlabSink | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Blend ``predict`` over windows of ``image`` (C, X, Y, Z), already on the compute device.

    predict(windows (B, C, *roi)) -> (logits (B, num_classes, *roi), maps (B, num_maps, *roi) or None).
    Returns (logits (num_classes, X, Y, Z), maps (num_maps, X, Y, Z) or None) float32 on
    stitch_device; or, with ``on_slab``, hands it each finished slab instead (see SlabSink; maps
    uncovered there hold the ``uncovered_maps`` values, or are left for the sink to fill) and returns
    (None, None). ``starts``: the windows to run (from plan_windows; default all). The image is
    zero-padded (symmetrically) up to the roi where smaller, and the outputs are cropped back.
    progress(done, total) is called before the first window batch and after each one (over the
    windows run); a False return raises Cancelled. ``uncovered_maps``: per map, its value where no
    run window covers a voxel (None: the map's lowest score where one does).
    """
    stitch_device = torch.device(stitch_device or image.device)
    shape = tuple(image.shape[1:])
    image, crop = pad_to_roi(image, roi)
    padded = tuple(image.shape[1:])
    starts = plan_windows(shape, roi, overlap) if starts is None else list(starts)
    ax = max(range(len(padded)), key=lambda d: padded[d])  # the slab axis: the smallest buffers
    batches = window_batches(starts, batch_size, ax)
    depth = min(padded[ax], max([b[-1][ax] - b[0][ax] + roi[ax] for b in batches], default=1))

    whole = None
    if on_slab is None:
        whole = WholeVolume(shape, num_classes, num_maps, stitch_device)
        on_slab = whole.put
    finish = SlabFinisher(ax, crop, shape, uncovered_maps, on_slab)
    ring = BlendRing(padded, roi, ax, depth, num_classes, num_maps, stitch_device)
    gather = WindowGatherer(image, roi, len(batches[0]) if batches else 1)

    def report(done: int) -> None:
        if progress is not None and progress(done, len(batches)) is False:
            raise Cancelled("segmentation cancelled")

    report(0)
    for done, batch in enumerate(batches, 1):
        ring.advance(batch[0][ax], finish)
        out_logits, out_maps = predict(gather(batch))
        ring.add(batch, out_logits, out_maps)
        del out_logits, out_maps
        report(done)
    ring.advance(padded[ax], finish)
    if whole is None:
        return None, None
    return whole.result(uncovered_maps)


def pad_to_roi(image: torch.Tensor, roi: Sequence[int]) -> tuple[torch.Tensor, list[slice]]:
    """``image`` (C, X, Y, Z) zero-padded symmetrically up to ``roi`` where smaller, and the slices of the
    padded grid that hold the image (the crop back)."""
    shape = image.shape[1:]
    pad = [max(0, r - s) for r, s in zip(roi, shape)]
    if any(pad):
        image = F.pad(image, [q for p in reversed(pad) for q in (p // 2, p - p // 2)])
    return image, [slice(p // 2, p // 2 + s) for p, s in zip(pad, shape)]


def window_batches(starts: Sequence[tuple[int, ...]], batch_size: int, ax: int) -> list[list[tuple[int, ...]]]:
    """The windows in order of their start along the slab axis ``ax`` (stable: product order within a layer
    of windows), in batches of ``batch_size``: a slab is final once the next batch starts past it."""
    ordered = sorted(starts, key=lambda start: start[ax])
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def along(ax: int, part: slice, others: Sequence[slice]) -> tuple[slice, ...]:
    """``others`` with ``part`` in place of the slab axis ``ax``."""
    return tuple(part if d == ax else other for d, other in enumerate(others))


class WindowGatherer:
    """Copies a batch of windows of the image into one buffer allocated once (a fresh stack per batch made
    the allocator map and unmap pages per window)."""

    def __init__(self, image: torch.Tensor, roi: Sequence[int], size: int):
        self.image, self.roi = image, tuple(roi)
        self.windows = torch.empty((size, image.shape[0], *roi), dtype=image.dtype, device=image.device)

    def __call__(self, batch: Sequence[tuple[int, ...]]) -> torch.Tensor:
        for b, start in enumerate(batch):
            self.windows[b].copy_(self.image[(slice(None), *(slice(s, s + r) for s, r in zip(start, self.roi)))])
        return self.windows[:len(batch)]


class BlendRing:
    """The running gaussian-weighted sums (logits, maps, weights) of ``depth`` layers of the padded volume
    along the slab axis, a ring: layer L lives at buffer position L % depth. Allocated once; finished layers
    are handed out and zeroed for reuse. A ring rather than moving the layers kept to the front: that copy
    took a sixth of a full CT's stitching."""

    def __init__(self, padded: Sequence[int], roi: Sequence[int], ax: int, depth: int, num_classes: int,
                 num_maps: int, device: torch.device):
        self.roi, self.ax, self.depth = tuple(roi), ax, depth
        self.importance = gaussian_importance(roi, device)
        held = [depth if d == ax else n for d, n in enumerate(padded)]
        self.device = device
        self.logits = torch.zeros((num_classes, *held), dtype=torch.float32, device=device)
        self.maps = torch.zeros((num_maps, *held), dtype=torch.float32, device=device) if num_maps else None
        self.weight = torch.zeros((1, *held), dtype=torch.float32, device=device)
        self.lo = 0  # the first layer (padded, along ax) the buffers hold

    def pieces(self, first: int, count: int) -> list[tuple[int, int, int]]:
        """Layers first..first+count as the pieces (layer, buffer position, layers) the ring holds them in."""
        pos = first % self.depth
        head = min(count, self.depth - pos)
        return [(first, pos, head)] + ([(first + head, 0, count - head)] if count > head else [])

    def add(self, batch: Sequence[tuple[int, ...]], logits: torch.Tensor, maps: torch.Tensor | None) -> None:
        """Add each window's outputs (B, K, *roi), weighted by the gaussian, where the window lies."""
        ax, whole = self.ax, [slice(None)] * len(self.roi)
        logits = logits.to(self.device)
        if self.maps is not None:
            maps = maps.to(self.device)
        for b, start in enumerate(batch):
            box = [slice(s, s + r) for s, r in zip(start, self.roi)]
            for first, pos, n in self.pieces(start[ax], self.roi[ax]):
                reg = along(ax, slice(pos, pos + n), box)
                part = along(ax, slice(first - start[ax], first - start[ax] + n), whole)
                weight = self.importance[part]
                self.logits[(slice(None), *reg)].addcmul_(logits[b][(slice(None), *part)], weight)
                if self.maps is not None:
                    self.maps[(slice(None), *reg)].addcmul_(maps[b][(slice(None), *part)], weight)
                self.weight[(0, *reg)].add_(weight)

    def advance(self, upto: int, finish: "SlabFinisher") -> None:
        """Finish every layer before ``upto`` (hand it to ``finish``, then zero it): the buffers then hold
        layers upto..upto+depth."""
        while self.lo < upto:
            step = min(upto - self.lo, self.depth)
            for first, pos, n in self.pieces(self.lo, step):
                views = [None if buf is None else buf.narrow(1 + self.ax, pos, n)
                         for buf in (self.logits, self.maps, self.weight)]
                finish(first, *views)
                for view in views:
                    if view is not None:
                        view.zero_()
            self.lo += step


class SlabFinisher:
    """Turns finished layers of the running sums into the blend (sums / weights; background where no window
    ran), cropped to the image, and hands them to the slab sink."""

    def __init__(self, ax: int, crop: Sequence[slice], shape: Sequence[int],
                 uncovered_maps: Sequence[float] | None, sink: SlabSink):
        self.ax, self.crop, self.shape = ax, list(crop), tuple(shape)
        self.uncovered_maps, self.sink = uncovered_maps, sink

    def __call__(self, first: int, logits: torch.Tensor, maps: torch.Tensor | None, weight: torch.Tensor) -> None:
        """``logits``, ``maps``, ``weight``: the sums of padded layers first.. along the slab axis (views,
        divided in place)."""
        ax, crop = self.ax, self.crop
        a, b = max(first, crop[ax].start), min(first + logits.shape[1 + ax], crop[ax].stop)
        if a >= b:
            return
        region = along(ax, slice(a - first, b - first), crop)
        w = weight[0][region]
        uncovered = w == 0
        w.masked_fill_(uncovered, 1.0)
        slab = logits[(slice(None), *region)].div_(w)
        slab[0].masked_fill_(uncovered, 1.0)
        slab_maps = None
        if maps is not None:
            slab_maps = maps[(slice(None), *region)].div_(w)
            if self.uncovered_maps is not None:
                for k, channel in enumerate(slab_maps):
                    channel.masked_fill_(uncovered, self.uncovered_maps[k])
        where = along(ax, slice(a - crop[ax].start, b - crop[ax].start), [slice(0, n) for n in self.shape])
        self.sink(where, slab, slab_maps, uncovered)


class WholeVolume:
    """The slab sink that fills whole-volume outputs (when the caller takes the blend in one piece)."""

    def __init__(self, shape: Sequence[int], num_classes: int, num_maps: int, device: torch.device):
        self.logits = torch.empty((num_classes, *shape), dtype=torch.float32, device=device)
        self.maps = torch.empty((num_maps, *shape), dtype=torch.float32, device=device) if num_maps else None
        self.uncovered = torch.zeros(tuple(shape), dtype=torch.bool, device=device)

    def put(self, where, slab, slab_maps, uncovered) -> None:
        self.logits[(slice(None), *where)] = slab
        self.uncovered[where] = uncovered
        if self.maps is not None:
            self.maps[(slice(None), *where)] = slab_maps

    def result(self, uncovered_maps: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, maps); maps where no window ran take their lowest score unless ``uncovered_maps`` set them."""
        maps, uncovered = self.maps, self.uncovered
        if maps is not None and uncovered_maps is None and uncovered.any() and not uncovered.all():
            fill_lowest(maps, uncovered)
        return self.logits, maps


def fill_lowest(maps: torch.Tensor, uncovered: torch.Tensor) -> None:
    """Each map where ``uncovered``: its lowest score elsewhere (attends least)."""
    for channel in maps:
        channel.masked_fill_(uncovered, float(channel[~uncovered].min()))


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


def dilate_blocks(body: torch.Tensor, margin: int) -> torch.Tensor:
    """``body`` (from body_blocks) grown by ``margin`` blocks along every axis (a cube)."""
    if margin <= 0:
        return body
    k = 2 * margin + 1
    return F.max_pool3d(body[None, None].float(), k, stride=1, padding=margin)[0, 0] > 0


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
