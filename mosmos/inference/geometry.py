"""The model grid of a volume and resampling between it and the input grid.

The model grid mirrors the training transforms (monai Orientation("RAS") then Spacing): the input
axes are permuted and flipped to the closest RAS axes (an oblique direction stays oblique), then
resampled to the model spacing with voxel 0 kept in place and ``round((n - 1) * s_in / s_out + 1)``
voxels per axis (numpy's round, a half to even, as monai's compute_shape_offset). Because of that the
input -> model mapping is, per axis, a permutation/flip followed by a scale: every resampling here is
separable and exact in world coordinates, so labels painted at a world position come back at the same
world position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import os

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MosmosError


@dataclass(frozen=True)
class ModelGrid:
    """How one input array (X, Y, Z order, 4x4 voxel->RAS affine) maps to the model grid.

    perm[j] is the input axis that becomes RAS-like axis j; flip[j] says whether it is reversed.
    ratio[j] = model spacing / input spacing along axis j: model voxel m sits at reoriented input
    index m * ratio[j].
    """

    input_shape: tuple[int, int, int]
    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    ratio: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: np.ndarray  # model voxel -> RAS

    @property
    def oriented_shape(self) -> tuple[int, int, int]:
        return tuple(self.input_shape[p] for p in self.perm)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=float)[:3, :3] ** 2).sum(axis=0))


def model_grid(shape, affine, spacing) -> ModelGrid:
    affine = np.asarray(affine, dtype=float)
    ornt = nib.orientations.io_orientation(affine)
    perm = [0, 0, 0]
    flip = [False, False, False]
    for axis_in, (axis_out, sign) in enumerate(ornt):
        perm[int(axis_out)] = axis_in
        flip[int(axis_out)] = sign < 0
    oriented_affine = affine @ nib.orientations.inv_ornt_aff(ornt, tuple(shape))
    sizes = voxel_sizes(oriented_affine)
    spacing = np.asarray(spacing if spacing is not None else sizes, dtype=float)
    spacing = np.where(spacing > 0, spacing, sizes)  # monai: non-positive keeps the input spacing
    ratio = spacing / sizes
    n = np.array([shape[p] for p in perm], dtype=float)
    # round(x + 1), not round(x) + 1: they differ where x is a half (20 slices of 3 mm to 2 mm), and the
    # training transforms (monai's Spacing) take the former
    out_shape = tuple(int(v) for v in np.round((n - 1) / ratio + 1.0))
    out_affine = oriented_affine @ np.diag([*ratio, 1.0])
    return ModelGrid(tuple(int(s) for s in shape), tuple(perm), tuple(flip), tuple(float(r) for r in ratio),
                     out_shape, out_affine)


def available_memory() -> int:
    """Bytes of memory the system can still give (Linux: MemAvailable; elsewhere: all physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_grid_memory(grid: ModelGrid, channels: int, source: str, available: int | None = None) -> None:
    """Refuse, before resampling, a model grid whose ``channels`` float32 arrays (image, scores, maps) would
    not fit in memory: usually a header with wrong voxel sizes, so say which sizes make it that large."""
    need = 4 * channels * int(np.prod(grid.shape, dtype=np.float64))
    available = available_memory() if available is None else available
    if need <= available:
        return
    model_mm = voxel_sizes(grid.affine)
    input_mm = model_mm / np.asarray(grid.ratio)
    extent = input_mm * np.asarray(grid.oriented_shape)

    def xyz(values, fmt="{:g}"):
        return " x ".join(fmt.format(v) for v in values)

    raise MosmosError(
        f"{source}: a {xyz(grid.oriented_shape)} volume of {xyz(input_mm, '{:.4g}')} mm voxels "
        f"({xyz(extent, '{:.0f}')} mm across) resampled to the model's {xyz(model_mm, '{:.4g}')} mm spacing would "
        f"become {xyz(grid.shape)} voxels, about {need / 2**30:,.1f} GiB, more than the {available / 2**30:,.1f} GiB "
        "of memory available; check the voxel sizes in the file's header")


def to_oriented(t: torch.Tensor, grid: ModelGrid) -> torch.Tensor:
    """Input-order spatial tensor (..., X, Y, Z) -> RAS-like axis order (a view when possible)."""
    lead = t.dim() - 3
    t = t.permute(*range(lead), *(lead + p for p in grid.perm))
    dims = [lead + j for j in range(3) if grid.flip[j]]
    return t.flip(dims) if dims else t


def from_oriented(a: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """Inverse of to_oriented for numpy arrays (views)."""
    for j in range(3):
        if grid.flip[j]:
            a = np.flip(a, axis=j)
    return np.transpose(a, np.argsort(grid.perm))


GRID_BYTES = 64 << 20  # sampling-grid memory per grid_sample call (the output is made in slabs)


def _norm(coords: torch.Tensor, n: int) -> torch.Tensor:
    return coords * (2.0 / (n - 1)) - 1.0 if n > 1 else torch.zeros_like(coords)


def resample(t: torch.Tensor, coords: list[torch.Tensor]) -> torch.Tensor:
    """Trilinear samples of t (C, X, Y, Z) at the grid coords[0] x coords[1] x coords[2] of fractional
    source indices (border clamped) -> (C, len0, len1, len2) float32. Separable coordinates, but
    grid_sample does the work: it is much faster on CPU than per-axis gathers. The output is made in
    slabs along the last axis, each from only the source slices it needs, made float32 one slab at a
    time (a whole int16 CT made float32 at once doubled the peak memory of reading it)."""
    n = t.shape[1:]
    out = torch.empty((t.shape[0], *(len(c) for c in coords)), dtype=torch.float32, device=t.device)
    per_slice = len(coords[0]) * len(coords[1]) * 12
    step = max(1, GRID_BYTES // per_slice)
    a, b = _norm(coords[0], n[0]), _norm(coords[1], n[1])
    for k0 in range(0, len(coords[2]), step):
        z = coords[2][k0:k0 + step].clamp(0, n[2] - 1)
        lo, hi = int(z.min().floor()), int(z.max().ceil()) + 1  # the source slices these samples read
        c = _norm(z - lo, hi - lo)
        gx, gy, gz = torch.meshgrid(a, b, c, indexing="ij")
        grid = torch.stack([gz, gy, gx], dim=-1)[None]  # grid_sample wants (W, H, D) = (Z, Y, X) order
        out[..., k0:k0 + step] = F.grid_sample(t[None, ..., lo:hi].float(), grid, mode="bilinear",
                                               padding_mode="border", align_corners=True)[0]
    return out


def _coords(n_out: int, step: float, device) -> torch.Tensor:
    return (torch.arange(n_out, device=device, dtype=torch.float64) * step).float()


def resample_to_model(oriented: torch.Tensor, grid: ModelGrid) -> torch.Tensor:
    """(C, X, Y, Z) tensor in oriented order -> (C, model grid) float32."""
    return resample(oriented, [_coords(grid.shape[j], grid.ratio[j], oriented.device) for j in range(3)])


def oriented_view(a: np.ndarray, grid: ModelGrid) -> np.ndarray:
    """An input-order array (X, Y, Z) seen in RAS-like axis order, as to_oriented sees a tensor (a view)."""
    a = np.transpose(a, grid.perm)
    return a[tuple(slice(None, None, -1) if f else slice(None) for f in grid.flip)]


BLOCK_BYTES = 32 << 20  # float32 output per block of resample_to_input


def _linear_steps(n_out: int, step: float, n: int, device):
    """Per output voxel along one axis: the two source voxels (border clamped) and the second's weight."""
    c = _coords(n_out, step, device).clamp(0, n - 1)
    lo = c.floor().long().clamp(max=max(n - 2, 0))
    return lo, (lo + 1).clamp(max=n - 1), c - lo


def _lerp_along(a: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    w = w.view([-1 if d == dim else 1 for d in range(a.dim())])
    return torch.lerp(a.index_select(dim, lo), a.index_select(dim, hi), w)


def resample_to_input(model: torch.Tensor, grid: ModelGrid, out: np.ndarray,
                      finish: Callable[[torch.Tensor], None] | None = None) -> None:
    """Linear samples of ``model`` (one channel on the model grid) at the oriented input grid's voxels, written
    into ``out`` (oriented input shape: an oriented_view of the caller's array in its own axis order and type),
    a block of axis-0 rows at a time, each float32 block first passed to ``finish`` to edit in place.

    Trilinear interpolation is separable, and the model grid is the input's scaled per axis, so the samples are
    three passes of 1D linear interpolation: 1.6 s against grid_sample's 4.6 s for a full CT's map on 2 loaded
    cores, without grid_sample's whole float32 copy of the map and of its sampling grid."""
    steps = [_linear_steps(grid.oriented_shape[j], 1.0 / grid.ratio[j], model.shape[j], model.device)
             for j in range(3)]
    lo0, hi0, w0 = steps[0]
    rows = max(1, BLOCK_BYTES // (4 * out.shape[1] * out.shape[2]))
    for r0 in range(0, out.shape[0], rows):
        r1 = min(r0 + rows, out.shape[0])
        first, last = int(lo0[r0]), int(hi0[r1 - 1])
        block = model[first:last + 1].float()
        for dim in (2, 1):
            block = _lerp_along(block, dim, *steps[dim])
        block = _lerp_along(block, 0, lo0[r0:r1] - first, hi0[r0:r1] - first, w0[r0:r1])
        if finish is not None:
            finish(block)
        out[r0:r1] = block.cpu().numpy()


def nearest_model_indices(grid: ModelGrid) -> list[np.ndarray]:
    """Per oriented input axis, the index of the nearest model voxel (exact voxel-centre mapping)."""
    return [np.clip(np.rint(np.arange(grid.oriented_shape[j]) / grid.ratio[j]), 0, grid.shape[j] - 1).astype(np.intp)
            for j in range(3)]
