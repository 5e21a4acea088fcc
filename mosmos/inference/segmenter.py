"""Segmenter: a model file + a volume (array + affine) + organ names -> SegmentationResult.

Post-processing never holds per-class scores on the input grid: argmax happens on the model grid,
and each input voxel takes the label of its nearest model voxel (exact voxel-centre mapping; as
monai's Invertd does for discrete labels). Interpolating the logits slab by slab before the argmax
(smoother borders by a fraction of a model voxel) was measured at 319 s against 24 s for the whole
run on a 512x512x300 CT on 2 CPU cores (benchmarks/bench_segment_memory.py). Attention maps are the
network's pixel–tag scores, blended over windows, min-max normalised per tag over the whole volume
(1 = where the tag attends most; not a probability), and resampled linearly to the input grid only
when read from ``SegmentationResult.attention``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MosmosError
from ..tags import color_for
from ..train.config import check_number
from .geometry import (ModelGrid, check_grid_memory, from_oriented, model_grid, nearest_model_indices,
                       resample_to_input, resample_to_model, to_oriented)
from .network import load_segmentation_model, roi_size_of
from .preprocess import Preprocessing
from .sliding import sliding_window
from .tagselect import select_tags

Progress = Callable[[int, int], "bool | None"]


class AttentionMaps(Mapping):
    """tag -> float32 array in [0, 1] on the input grid (input shape and order).

    Each read resamples from the model grid: keep the array you get rather than reading twice, and
    read one map at a time so only one full-size map exists at once.
    """

    def __init__(self, names: list[str], maps: torch.Tensor | None, grid: ModelGrid, kji: bool):
        self._index = {n: i for i, n in enumerate(names)}
        self._maps, self._grid, self._kji = maps, grid, kji

    def __getitem__(self, name: str) -> np.ndarray:
        i = self._index[name]
        with torch.inference_mode():
            full = resample_to_input(self._maps[i:i + 1], self._grid)[0].cpu().numpy()
        np.clip(full, 0.0, 1.0, out=full)  # trilinear rounding can overshoot by an ulp
        out = from_oriented(full, self._grid)
        return np.ascontiguousarray(out.T if self._kji else out, dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


@dataclass
class SegmentationResult:
    labelmap: np.ndarray
    affine: np.ndarray
    organs: list[dict] = field(default_factory=list)
    attention: Mapping[str, np.ndarray] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


def resolve_device(device: str | torch.device) -> torch.device:
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MosmosError(f"device: unknown device {device!r} (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MosmosError("device: CUDA was requested but no CUDA GPU is available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise MosmosError(f"device: {device!r} is not supported (use auto, cpu or cuda)")
    return dev


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Segmenter:
    """Loads a segmentation model file once; ``segment`` runs it on volumes."""

    def __init__(self, model_file, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.model_file = str(model_file)
        self.network, self.header = load_segmentation_model(model_file, self.device)
        try:
            labels = sorted((int(v), str(n)) for v, n in self.header["labels"].items())
        except (TypeError, ValueError):
            raise MosmosError(f"{model_file}: invalid 'labels' in the model header") from None
        self.label_values = [v for v, _ in labels]
        self.label_names = [n for _, n in labels]
        self.organ_names = [n for v, n in labels if v != 0]
        self.preprocessing = Preprocessing.from_header(self.header, str(model_file))
        self.roi_size = roi_size_of(self.network, self.header)
        self.modality = str(self.header.get("modality") or "").upper() or None

    # ---------------------------------------------------------------------------------------
    def segment(self, array: np.ndarray, affine: np.ndarray, tags=None, progress: Progress | None = None,
                overlap: float = 0.5, array_order: str = "xyz", modality: str | None = None,
                source: str = "volume", sw_batch_size: int | None = None) -> SegmentationResult:
        """Segment ``array`` (3D, (X, Y, Z) or with array_order="kji" (K, J, I)) whose voxel->RAS
        matrix is ``affine``. ``tags``: None for every organ the model labels, or names (a list or a
        "liver, spleen" string). ``modality`` ("CT"/"MR"), when known, is checked against the model.
        ``source`` names the volume in error messages. Raises Cancelled when progress returns False.
        """
        if array_order not in ("xyz", "kji"):
            raise MosmosError(f"array_order: expected 'xyz' or 'kji', got {array_order!r}")
        check_number("overlap", overlap)
        array = np.asarray(array)
        kji = array_order == "kji"
        arr = array.T if kji else array
        affine = self._check_affine(affine, source)
        notices = self._check_volume(arr, source, modality)
        selection = select_tags(tags, self.organ_names, hasattr(self.network, "open_set_maps"))
        notices += selection.notices
        grid = model_grid(arr.shape, affine, self.preprocessing.spacing)
        n_maps = len(selection.labelled) + len(selection.open_set)
        # the model-grid image, class scores, stitching weights and maps; the argmax's int64 counts as 2
        check_grid_memory(grid, 1 + len(self.label_values) + 1 + n_maps + 2, source)

        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_count())
        try:
            with torch.inference_mode():
                labels_oriented, maps, more = self._run(arr, grid, selection, progress, overlap, sw_batch_size)
        finally:
            torch.set_num_threads(threads)
        notices += more

        labelmap = from_oriented(labels_oriented, grid)
        labelmap = np.ascontiguousarray(labelmap.T if kji else labelmap)
        voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        counts = np.bincount(labelmap.reshape(-1), minlength=max(self.label_values) + 1)
        organs = []
        for name in selection.labelled:
            value = self.label_values[self.label_names.index(name)]
            organs.append({"name": name, "label": value, "color": list(color_for(name)),
                           "volume_ml": round(float(counts[value]) * voxel_ml, 3)})
            if counts[value] == 0:
                notices.append(f"{name}: not found in this volume (no voxels labelled)")
        map_names = selection.labelled + (selection.open_set if hasattr(self.network, "open_set_maps") else [])
        attention = AttentionMaps(map_names, maps, grid, kji) if maps is not None else {}
        return SegmentationResult(labelmap, np.array(affine), organs, attention, notices)

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_affine(affine, source: str) -> np.ndarray:
        a = np.asarray(affine, dtype=float)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise MosmosError(f"{source}: invalid voxel-to-RAS matrix (need a finite, invertible 4x4 affine)")
        return a

    def _check_volume(self, arr: np.ndarray, source: str, modality: str | None) -> list[str]:
        if arr.ndim != 3:
            raise MosmosError(f"{source}: expected a 3D volume, got {arr.ndim}D data of shape {arr.shape}")
        if len(self.roi_size) == 3 and min(arr.shape) < 2:
            raise MosmosError(f"{source}: is a single 2D slice (shape {arr.shape}); this model segments 3D volumes")
        if arr.dtype.kind not in "biuf":
            raise MosmosError(f"{source}: unsupported voxel type {arr.dtype}")
        lo, hi = arr.min(), arr.max()
        notices = []
        if arr.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
            finite = np.isfinite(arr)
            bad = arr.size - int(np.count_nonzero(finite))
            if bad == arr.size:
                raise MosmosError(f"{source}: every voxel is NaN or infinite; nothing to segment")
            lo, hi = arr[finite].min(), arr[finite].max()
            notices.append(f"{source}: {bad} of {arr.size} voxels are not finite (NaN or infinite); they are treated "
                           "as NaN: filled with the lowest finite value")
        if lo == hi:
            raise MosmosError(f"{source}: the volume is constant (every voxel is {lo}); nothing to segment")
        modality = (modality or "").upper() or None
        if modality in ("MRI",):
            modality = "MR"
        if self.modality and modality and modality != self.modality:
            notices.append(f"the model was trained on {self.modality} but {source} is {modality}: results may be poor")
        elif self.modality == "CT" and modality is None and lo >= 0 and hi > 0:
            notices.append(f"{source} has no negative values, unlike CT in Hounsfield units; this is a CT model: "
                           "results may be poor")
        return notices

    # ---------------------------------------------------------------------------------------
    def _model_image(self, arr: np.ndarray, grid: ModelGrid, device: torch.device) -> torch.Tensor:
        if arr.dtype.kind == "b" or arr.dtype == np.uint16 or arr.dtype == np.uint32:
            arr = arr.astype(np.float32)
        if any(s < 0 for s in arr.strides):
            arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr).to(device)
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not finite.all():  # NaN and infinities alike (_check_volume has counted them)
                t = torch.where(finite, t.float(), t[finite].min().float())
            del finite
        image = resample_to_model(to_oriented(t, grid)[None], grid)
        del t
        return self.preprocessing.scale_intensity(image)

    def _predictor(self, selection, map_channels: list[int]):
        net, roi, device = self.network, self.roi_size, self.device
        two_d = len(roi) == 2
        open_set = selection.open_set if hasattr(net, "open_set_maps") else []

        def predict(windows: torch.Tensor):
            x = windows[..., 0] if two_d else windows
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits, maps = net(x)
                extra = net.open_set_maps(x, open_set) if open_set else None
            if two_d:
                logits, maps = logits[..., None], (None if maps is None else maps[..., None])
                extra = None if extra is None else extra[..., None]
            parts = ([maps[:, map_channels]] if map_channels and maps is not None else []) + \
                    ([extra] if extra is not None else [])
            if not parts:
                return logits, None
            sel = torch.cat([p.float() for p in parts], dim=1)
            if sel.dim() == 4:  # 2D maps of a 2D net
                sel = sel[..., None]
            return logits, F.interpolate(sel, size=windows.shape[2:], mode="trilinear", align_corners=False)

        return predict

    def _run(self, arr, grid, selection, progress, overlap, sw_batch_size):
        notices: list[str] = []
        map_channels = [self.label_names.index(n) for n in selection.labelled]
        n_maps = len(map_channels) + (len(selection.open_set) if hasattr(self.network, "open_set_maps") else 0)
        roi = tuple(self.roi_size) + ((1,) if len(self.roi_size) == 2 else ())
        batch = sw_batch_size or (4 if self.device.type == "cuda" else 1)
        lut = torch.zeros(len(self.label_values), dtype=torch.int64)
        for name in selection.labelled:
            k = self.label_names.index(name)
            lut[k] = self.label_values[k]
        stitch_devices = [self.device] + ([torch.device("cpu")] if self.device.type == "cuda" else [])
        for attempt, stitch in enumerate(stitch_devices):
            try:
                image = self._model_image(arr, grid, self.device)
                logits, maps = sliding_window(image, roi, self._predictor(selection, map_channels),
                                              len(self.label_values), n_maps, overlap, batch, stitch, progress)
                del image
                if maps is not None:
                    maps = _minmax_per_channel(maps).cpu()
                labels = self._labels_on_input(logits, grid, lut.to(logits.device))
                return labels, maps, notices
            except torch.cuda.OutOfMemoryError:
                image = logits = maps = None
                torch.cuda.empty_cache()
                if attempt + 1 == len(stitch_devices):
                    raise MosmosError("GPU out of memory even with CPU stitching; use --device cpu") from None
                notices.append("GPU memory was short: outputs were stitched on the CPU")
        raise AssertionError("unreachable")

    def _labels_on_input(self, logits: torch.Tensor, grid: ModelGrid, lut: torch.Tensor) -> np.ndarray:
        out_dtype = np.uint8 if max(self.label_values) < 256 else np.uint16
        labels = lut[logits.argmax(0)].cpu().numpy().astype(out_dtype)
        return labels[np.ix_(*nearest_model_indices(grid))]


def _minmax_per_channel(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - lo)
    return maps.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))
