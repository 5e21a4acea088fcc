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
from .geometry import (ModelGrid, from_oriented, model_grid, nearest_model_indices, resample_to_input,
                       resample_to_model, to_oriented)
from .network import load_segmentation_model, roi_size_of
from .precision import resolve_precision
from .preprocess import Preprocessing
from .sliding import body_blocks, body_box, plan_windows, sliding_window
from .tagselect import select_tags

Progress = Callable[[int, int], "bool | None"]

# The default overlap, and the one of a quick first look (--fast): 0.25 runs about half the windows.
OVERLAP, FAST_OVERLAP = 0.5, 0.25
BODY_BLOCK = 4  # model voxels a side of the blocks the body mask is judged on


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
    # how the windows ran: precision ("fp32" | "bf16"), overlap, windows (run), windows_skipped
    run: dict = field(default_factory=dict)


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
                overlap: float | None = None, array_order: str = "xyz", modality: str | None = None,
                source: str = "volume", sw_batch_size: int | None = None, fast: bool = False,
                precision: str = "auto", skip_outside_body: bool = True) -> SegmentationResult:
        """Segment ``array`` (3D, (X, Y, Z) or with array_order="kji" (K, J, I)) whose voxel->RAS
        matrix is ``affine``. ``tags``: None for every organ the model labels, or names (a list or a
        "liver, spleen" string). ``modality`` ("CT"/"MR"), when known, is checked against the model.
        ``source`` names the volume in error messages. Raises Cancelled when progress returns False.
        ``overlap`` defaults to OVERLAP, or FAST_OVERLAP when ``fast``. ``precision``: "auto" (bf16
        where native, else fp32), "fp32" or "bf16". ``skip_outside_body``: windows holding no body
        voxel are not run (no label inside the body changes).
        """
        if overlap is None:
            overlap = FAST_OVERLAP if fast else OVERLAP
        if array_order not in ("xyz", "kji"):
            raise MosmosError(f"array_order: expected 'xyz' or 'kji', got {array_order!r}")
        if not 0 <= overlap < 1:
            raise MosmosError(f"overlap: must be in [0, 1), got {overlap}")
        array = np.asarray(array)
        kji = array_order == "kji"
        arr = array.T if kji else array
        affine = self._check_affine(affine, source)
        notices, constant = self._check_volume(arr, source, modality)
        selection = select_tags(tags, self.organ_names, hasattr(self.network, "open_set_maps"))
        notices += selection.notices
        grid = model_grid(arr.shape, affine, self.preprocessing.spacing)
        precision, more = resolve_precision(precision, self.device)
        notices += more
        run = {"precision": precision, "overlap": overlap, "windows": 0, "windows_skipped": 0}
        if constant:
            empty = np.zeros(array.shape, np.uint8 if max(self.label_values) < 256 else np.uint16)
            return SegmentationResult(empty, np.array(affine), self._organs(selection, np.bincount([0]), 0.0),
                                      {}, notices + [f"{source}: the volume is constant ({constant}); "
                                                     "nothing to segment: the label map is empty"], run)

        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_count())
        try:
            with torch.inference_mode():
                labels_oriented, maps, more = self._run(arr, grid, selection, progress, overlap, sw_batch_size,
                                                        precision, skip_outside_body, run, source)
        finally:
            torch.set_num_threads(threads)
        notices += more

        labelmap = from_oriented(labels_oriented, grid)
        labelmap = np.ascontiguousarray(labelmap.T if kji else labelmap)
        voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        counts = np.bincount(labelmap.reshape(-1), minlength=max(self.label_values) + 1)
        organs = self._organs(selection, counts, voxel_ml)
        notices += [f"{o['name']}: not found in this volume (no voxels labelled)" for o in organs
                    if counts[o["label"]] == 0 and run["windows"]]
        map_names = selection.labelled + (selection.open_set if hasattr(self.network, "open_set_maps") else [])
        attention = AttentionMaps(map_names, maps, grid, kji) if maps is not None else {}
        return SegmentationResult(labelmap, np.array(affine), organs, attention, notices, run)

    def _organs(self, selection, counts: np.ndarray, voxel_ml: float) -> list[dict]:
        counts = np.pad(counts, (0, max(0, max(self.label_values) + 1 - len(counts))))
        return [{"name": name, "label": value, "color": list(color_for(name)),
                 "volume_ml": round(float(counts[value]) * voxel_ml, 3)}
                for name in selection.labelled for value in [self.label_values[self.label_names.index(name)]]]

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_affine(affine, source: str) -> np.ndarray:
        a = np.asarray(affine, dtype=float)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise MosmosError(f"{source}: invalid voxel-to-RAS matrix (need a finite, invertible 4x4 affine)")
        return a

    def _check_volume(self, arr: np.ndarray, source: str, modality: str | None) -> tuple[list[str], str]:
        """(notices, "" or "every voxel is <value>" for a constant volume)."""
        if arr.ndim != 3:
            raise MosmosError(f"{source}: expected a 3D volume, got {arr.ndim}D data of shape {arr.shape}")
        if len(self.roi_size) == 3 and min(arr.shape) < 2:
            raise MosmosError(f"{source}: is a single 2D slice (shape {arr.shape}); this model segments 3D volumes")
        if arr.dtype.kind not in "biuf":
            raise MosmosError(f"{source}: unsupported voxel type {arr.dtype}")
        lo, hi = arr.min(), arr.max()
        if arr.dtype.kind == "f" and (np.isnan(lo) or np.isnan(hi)):
            if np.isnan(arr).all():
                raise MosmosError(f"{source}: every voxel is NaN; nothing to segment")
            lo, hi = np.nanmin(arr), np.nanmax(arr)
        if lo == hi:
            return [], f"every voxel is {lo}"
        notices = []
        modality = (modality or "").upper() or None
        if modality in ("MRI",):
            modality = "MR"
        if self.modality and modality and modality != self.modality:
            notices.append(f"the model was trained on {self.modality} but {source} is {modality}: results may be poor")
        elif self.modality == "CT" and modality is None and lo >= 0 and hi > 0:
            notices.append(f"{source} has no negative values, unlike CT in Hounsfield units; this is a CT model: "
                           "results may be poor")
        return notices, ""

    # ---------------------------------------------------------------------------------------
    def _model_image(self, arr: np.ndarray, grid: ModelGrid, device: torch.device,
                     body: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The scaled image on the model grid; with ``body``, also its body_blocks (BODY_BLOCK)."""
        if arr.dtype.kind == "b" or arr.dtype == np.uint16 or arr.dtype == np.uint32:
            arr = arr.astype(np.float32)
        if any(s < 0 for s in arr.strides):
            arr = np.ascontiguousarray(arr)
        t = torch.from_numpy(arr).to(device)
        if t.is_floating_point() and torch.isnan(t).any():
            t = torch.nan_to_num(t.float(), nan=float(t[~torch.isnan(t)].min()))
        image = resample_to_model(to_oriented(t, grid)[None], grid)
        del t
        if not body:
            return self.preprocessing.scale_intensity(image)
        blocks = body_blocks(image, self.preprocessing.body_threshold(image), BODY_BLOCK)
        return self.preprocessing.scale_intensity(image), blocks

    def _predictor(self, selection, map_channels: list[int], precision: str):
        net, roi, device = self.network, self.roi_size, self.device
        two_d = len(roi) == 2
        open_set = selection.open_set if hasattr(net, "open_set_maps") else []

        def predict(windows: torch.Tensor):
            x = windows[..., 0] if two_d else windows
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
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

    def _run(self, arr, grid, selection, progress, overlap, sw_batch_size, precision, skip_outside_body, run,
             source):
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
                image, body = self._model_image(arr, grid, self.device, body=True)
                shape = tuple(image.shape[1:])
                # Windows tile the body's bounding box (as nnU-Net and TotalSegmentator crop to the
                # body), and those in it that hold no body voxel (lungs, bowel gas are body) are skipped.
                box = tuple(slice(0, n) for n in shape)
                starts = None
                if skip_outside_body:
                    box = body_box(body, BODY_BLOCK, shape, roi)
                    if box is None:
                        notices.append(f"{source}: no body found (nothing above the air around it): "
                                       "the label map is empty")
                        box = tuple(slice(0, 0) for _ in shape)
                        starts = []
                    else:
                        sub = body[tuple(slice(b.start // BODY_BLOCK, -(-b.stop // BODY_BLOCK)) for b in box)]
                        starts = plan_windows([b.stop - b.start for b in box], roi, overlap, sub, BODY_BLOCK)
                every = len(plan_windows(shape, roi, overlap))
                ran = every if starts is None else len(starts)
                run.update(windows=ran, windows_skipped=every - ran)
                crop = image[(slice(None), *box)]
                logits, maps = (sliding_window(crop, roi, self._predictor(selection, map_channels, precision),
                                               len(self.label_values), n_maps, overlap, batch, stitch, progress,
                                               starts) if ran else (None, None))
                del image, crop
                maps = self._maps_on_model_grid(maps, box, shape, n_maps)
                labels = self._labels_on_input(logits, box, grid, shape, lut)
                return labels, maps, notices
            except torch.cuda.OutOfMemoryError:
                image = logits = maps = None
                torch.cuda.empty_cache()
                if attempt + 1 == len(stitch_devices):
                    raise MosmosError("GPU out of memory even with CPU stitching; use --device cpu") from None
                notices.append("GPU memory was short: outputs were stitched on the CPU")
        raise AssertionError("unreachable")

    def _labels_on_input(self, logits: torch.Tensor | None, box, grid: ModelGrid, shape,
                         lut: torch.Tensor) -> np.ndarray:
        """Labels on the input grid from the logits of the ``box`` of the model grid (background
        outside it, and everywhere when there are no logits)."""
        out_dtype = np.uint8 if max(self.label_values) < 256 else np.uint16
        labels = np.zeros(shape, out_dtype)
        if logits is not None:
            labels[box] = lut.to(logits.device)[logits.argmax(0)].cpu().numpy()
        return labels[np.ix_(*nearest_model_indices(grid))]

    @staticmethod
    def _maps_on_model_grid(maps: torch.Tensor | None, box, shape, n_maps: int) -> torch.Tensor | None:
        """Min-max normalised maps on the whole model grid (CPU); outside ``box`` each map takes its
        lowest score (the air around the body attends least)."""
        if not n_maps:
            return None
        if maps is None:
            return torch.zeros((n_maps, *shape), dtype=torch.float32)
        maps = maps.cpu()
        lowest = maps.reshape(n_maps, -1).min(dim=1).values
        full = lowest.view(-1, 1, 1, 1).expand(n_maps, *shape).clone()
        full[(slice(None), *box)] = maps
        del maps
        return _minmax_per_channel(full)


def _minmax_per_channel(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - lo)
    return maps.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))
