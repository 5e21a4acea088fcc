"""Segmenter: a model file + a volume (array + affine) + organ names -> SegmentationResult.

Post-processing never holds per-class scores on the input grid: argmax happens on the model grid,
and each input voxel takes the label of its nearest model voxel (exact voxel-centre mapping; as
monai's Invertd does for discrete labels). Interpolating the logits slab by slab before the argmax
(smoother borders by a fraction of a model voxel) was measured at 319 s against 24 s for the whole
run on a 512x512x300 CT on 2 CPU cores (benchmarks/bench_segment_memory.py).

Attention maps are read the way L_pta trained them (losses.finetune.pta_probabilities): in each window the
pixel–tag maps of every class the model labels (background included) are up-sampled to the window,
divided by the model's epsilon and soft-maxed over the classes; per organ that is the probability
that this organ wins at the voxel, in [0, 1]. An open-set tag (a name the model was not fine-tuned
on) has no place in that softmax; its score is the two-class softmax of its map against the
background query's, P(tag rather than background), on the same 0..1 scale. With ``attention_raw``
the up-sampled scores themselves are kept instead (order 1, unnormalised, for research). Either is
blended over windows like the logits and resampled linearly to the input grid only when read from
``SegmentationResult.attention``.

On the CPU the network runs in bf16 where the CPU computes it natively (precision.py). The default
mode keeps the grid of windows of the fp32 reference (every window over the whole model grid) and
only leaves out the windows that hold no body voxel within a margin (as nnU-Net and TotalSegmentator
crop to the body, but without moving a window). A left-out window adds nothing to the blend: a voxel
it shares with run windows blends those alone, and one that no run window covers is background (an
organ's probability 0, a raw map its lowest score). Every voxel a left-out window covers is air at
least the margin away from the body, so at every body voxel the same windows blend with the same
weights as in the reference; only air may differ, where a trained model says background anyway.
``fast`` (a quick preview) uses fewer, less overlapping windows, tiling only the body's bounding box
(which moves the windows), with the same skipping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..errors import MosmosError
from ..files.modelfile import map_epsilon
from ..losses.finetune import pta_logits, pta_probabilities, upsample_maps
from ..tags import color_for
from .compilation import WindowForward, check_compile_choice
from .geometry import (ModelGrid, check_grid_memory, from_oriented, model_grid, nearest_model_indices,
                       oriented_view, resample_to_input, resample_to_model, to_oriented)
from .layout import channels_last
from .network import load_segmentation_model, roi_size_of
from .precision import resolve_precision
from .preprocess import Preprocessing
from .sliding import body_blocks, body_box, dilate_blocks, fill_lowest, plan_windows, sliding_window
from .tagselect import select_tags
from ..options import CPU, CUDA, check_number, local_rank
from ..qc.agreement import agreement

Progress = Callable[[int, int], "bool | None"]

# The default overlap, and the one of a quick first look (fast): 0.25 runs about half the windows.
OVERLAP, FAST_OVERLAP = 0.5, 0.25
BODY_BLOCK = 4  # model voxels a side of the blocks the body mask is judged on
# The exact mode skips a window only when no body block lies within this many blocks of it (6 mm at
# 1.5 mm voxels): skin and fat below the body threshold by partial volume stay in run windows.
SKIP_MARGIN = 1
# Attention probabilities are kept on the model grid in float16 (half the memory): in [0, 1] its
# rounding is at most 2^-12 = 0.00024. Raw scores stay float32.
MAP_DTYPE = torch.float16
QUANTUM = 1 / 65535  # the step of the 16-bit attention maps of the NIfTI outputs: at most 7.6e-6 off


def label_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels per label value, a slab at a time (bincount of a whole CT makes an int64 copy of it)."""
    counts = np.zeros(n, np.int64)
    for slab in labels.reshape(labels.shape[0], -1):
        counts += np.bincount(slab, minlength=n)[:n]
    return counts


def half_precision(a: np.ndarray) -> None:
    """Round float32 ``a`` in place to float16's 11 significant bits (in [0, 1] at most 2^-12 = 0.00024
    off, as the overlays are kept on the model grid, MAP_DTYPE): the zeroed low bits let gzip write
    a map in about half the time and space."""
    bits = a.view(np.uint32)
    bits += np.uint32(0x1000)
    bits &= np.uint32(0xFFFFE000)


class AttentionMaps(Mapping):
    """tag -> float32 array on the input grid (input shape and order): a probability in [0, 1]
    (see the module docstring), or the raw up-sampled scores when ``probabilities`` is False.

    Each read resamples from the model grid: keep the array you get rather than reading twice, and
    read one map at a time so only one full-size map exists at once.
    """

    def __init__(self, names: list[str], maps: torch.Tensor | None, grid: ModelGrid, kji: bool,
                 probabilities: bool = True):
        self._index = {n: i for i, n in enumerate(names)}
        self._maps, self._grid, self._kji = maps, grid, kji
        self.probabilities = probabilities

    def __getitem__(self, name: str) -> np.ndarray:
        def probabilities(block: torch.Tensor) -> None:
            block.clamp_(0.0, 1.0)  # linear rounding can overshoot by an ulp
            half_precision(block.numpy())
        return self._read(name, np.float32, probabilities if self.probabilities else None)

    def quantized(self, name: str) -> np.ndarray:
        """A probability map as uint16 steps of QUANTUM (value k is k * QUANTUM), as NIfTI outputs store it:
        made a block at a time, without a float32 copy of the whole map (half the memory, and no pass to scale
        it while writing)."""
        if not self.probabilities:
            raise ValueError("raw scores are not in [0, 1]: read them as float32")
        return self._read(name, np.uint16, lambda block: block.clamp_(0.0, 1.0).div_(QUANTUM).round_())

    def _read(self, name: str, dtype, finish) -> np.ndarray:
        grid = self._grid
        out = np.empty(grid.input_shape[::-1] if self._kji else grid.input_shape, dtype)
        with torch.inference_mode():
            resample_to_input(self._maps[self._index[name]], grid, oriented_view(out.T if self._kji else out, grid),
                              finish)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def synchronized_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device`` has finished its queued work: CUDA kernels run asynchronously,
    so without the wait a stage's seconds would count only the launches and the next stage the work."""
    if device.type == CUDA:
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class SegmentationResult:
    """What ``Segmenter.segment`` gives.

    Args:
        labelmap: integer labels on the input's grid (its shape and order).
        affine: the labelmap's voxel->RAS matrix (4x4).
        organs: per selected organ: name, label, volume_ml, color.
        attention: organ name -> map on the input's grid, resampled when first read (AttentionMaps).
        notices: one line each: organs not found, open-set tags, fallbacks.
        map_labelmap: with ``map_labels``, the pixel–tag maps' own label map (argmax over the classes), like
            ``labelmap``.
        run: how the windows ran: precision ("fp32" | "bf16"), overlap, windows (run), windows_skipped, compiled.
        seconds: seconds per stage: resample (the image to the model grid), windows (the network), stitch (the
            blend and its argmax), map back (the label maps to the input grid; the attention maps are mapped
            back when read), agreement (of each segment with its map).
        agreement: organ name -> qc.agreement.Agreement of its segment with its attention map, on the model grid
            (KeptOutputs.agreement); empty with raw attention scores; an absent organ has none.
    """

    labelmap: np.ndarray
    affine: np.ndarray
    organs: list[dict] = field(default_factory=list)
    attention: Mapping[str, np.ndarray] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    map_labelmap: np.ndarray | None = None
    run: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    agreement: dict = field(default_factory=dict)


def resolve_device(device: str | torch.device) -> torch.device:
    """auto, cpu, cuda or cuda:N; a bare cuda (auto's too) is this process's GPU: under torchrun the one of its
    LOCAL_RANK (a cohort's ranks would otherwise all segment on the first GPU)."""
    name = str(device).lower()
    if name == "auto":
        name = CUDA if torch.cuda.is_available() else CPU
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise MosmosError(f"device: unknown device {device!r} (use auto, cpu or cuda)") from None
    if dev.type == CUDA and not torch.cuda.is_available():
        raise MosmosError("device: CUDA was requested but no CUDA GPU is available (use --device cpu)")
    if dev.type not in (CPU, CUDA):
        raise MosmosError(f"device: {device!r} is not supported (use auto, cpu or cuda)")
    if dev.type == CUDA and dev.index is None:
        dev = torch.device(CUDA, local_rank() % torch.cuda.device_count())
    return dev


def window_threads() -> int:
    """Threads for the windows on the CPU: every core this process may use, unless OMP_NUM_THREADS pins its
    share (test workers, torchrun ranks, the study's parallel runs, a scheduler's slot). More threads than its
    share of the cores make each operation wait for threads the kernel has descheduled: a tiny 2D window took
    2.5 s instead of 0.02 s with two threads in each of two processes on a loaded 2-core machine."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    return cpu_count()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Segmenter:
    """Loads a segmentation model file once; ``segment`` runs it on volumes.

    Args:
        model_file: a MOSMOS segmentation model file (.mosmos).
        device: "auto" (a CUDA GPU when there is one), "cpu", "cuda", or a torch device.
    """

    def __init__(self, model_file: str | os.PathLike, device: str | torch.device = "auto"):
        self.device = resolve_device(device)
        self.model_file = str(model_file)
        self.network, self.header = load_segmentation_model(model_file, self.device)
        self.forward = WindowForward(self.network, self.header.get("config") or {})
        try:
            labels = sorted((int(v), str(n)) for v, n in self.header["labels"].items())
        except (TypeError, ValueError):
            raise MosmosError(f"{model_file}: invalid 'labels' in the model header") from None
        self.label_values = [v for v, _ in labels]
        self.label_names = [n for _, n in labels]
        if not self.label_values or self.label_values[0] != 0:
            raise MosmosError(f"{model_file}: the model's labels have no background (label 0)")
        self.organ_names = [n for v, n in labels if v != 0]
        self.preprocessing = Preprocessing.from_header(self.header, str(model_file))
        self.roi_size = roi_size_of(self.network, self.header)
        # 3D convolutions on the CPU in channels-last order (layout.py: about 0.76x a ViT-B window)
        self.channels_last = self.device.type == CPU and len(self.roi_size) == 3
        if self.channels_last:
            channels_last(self.network)
        self.modality = str(self.header.get("modality") or "").upper() or None
        self.epsilon, note = map_epsilon(self.header, str(model_file))
        self.model_notices = [note] if note else []
        if (self.header.get("provenance") or {}).get("lambda_pta") == 0:
            self.model_notices.append(f"{model_file} was fine-tuned without L_pta (lambda_pta 0): its pixel–tag "
                                      "maps were never trained to find organs, so attention overlays mean little")

    # ---------------------------------------------------------------------------------------
    def segment(self, array: np.ndarray, affine: np.ndarray, *, tags: str | Sequence[str] | None = None, progress: Progress | None = None,
                overlap: float | None = None, array_order: str = "xyz", modality: str | None = None,
                source: str = "volume", sw_batch_size: int | None = None, attention_raw: bool = False,
                map_labels: bool = False, fast: bool = False, precision: str = "auto",
                skip_air: bool = True, compile: str = "auto",
                status: Callable[[str], None] | None = None) -> SegmentationResult:
        """Segment ``array``: the selected organs' label map, attention maps and volumes on the volume's grid.

        A volume with no body (all air) or one value everywhere gives an empty label map and a notice.

        Args:
            array: the volume, 3D, in (X, Y, Z) order (or (K, J, I) with ``array_order="kji"``).
            affine: its voxel->RAS matrix (4x4).
            tags: None for every organ the model labels, or names (a list or a "liver, spleen" string); names
                the model was not fine-tuned on give attention maps only.
            progress: ``progress(done, total)`` after each batch of windows; returning False cancels (raises
                Cancelled).
            overlap: the sliding-window overlap in [0, 1); None for OVERLAP, or FAST_OVERLAP when ``fast``.
            array_order: "xyz" or "kji" (Slicer's array order).
            modality: "CT" or "MR" when known, checked against the model's.
            source: the volume's name in messages.
            sw_batch_size: windows per forward pass (None: 4 on a GPU, 1 on the CPU).
            attention_raw: attention maps are the raw up-sampled pixel–tag scores instead of probabilities.
            map_labels: also give ``map_labelmap``, the argmax of the maps over every class the model labels
                (background included), with the selected organs' label values.
            fast: a quick preview (see the module docstring).
            precision: "auto" (bf16 where native, else fp32), "fp32" or "bf16".
            skip_air: False runs every window of the default mode, also those far from the body (the
                reference the skipping is checked against).
            compile: "auto" (torch.compile on the CPU where inductor's cache already holds this network's code
                and the run is long enough to pay for loading it: compilation.py), "on" or "off".
            status: ``status(message)`` hears what a long silent step is about to do (a compile before the
                next window).

        Returns:
            The SegmentationResult, its ``run`` and ``seconds`` saying how the windows ran.
        """
        if overlap is None:
            overlap = FAST_OVERLAP if fast else OVERLAP
        if array_order not in ("xyz", "kji"):
            raise MosmosError(f"array_order: expected 'xyz' or 'kji', got {array_order!r}")
        check_number("overlap", overlap)
        check_compile_choice(compile)
        array = np.asarray(array)
        kji = array_order == "kji"
        arr = array.T if kji else array
        affine = self._check_affine(affine, source)
        notices, constant = self._check_volume(arr, source, modality)
        notices += self.model_notices
        selection = select_tags(tags, self.organ_names, hasattr(self.network, "open_set_maps"))
        notices += selection.notices
        grid = model_grid(arr.shape, affine, self.preprocessing.spacing)
        # with map_labels every class is stitched (the maps' own label map needs them all)
        n_maps = (len(self.label_values) if map_labels else len(selection.labelled)) + len(selection.open_set)
        # the model-grid image, class scores, stitching weights and maps; the argmax's int64 counts as 2
        check_grid_memory(grid, 1 + len(self.label_values) + 1 + n_maps + 2, source)
        precision, more = resolve_precision(precision, self.device)
        notices += more
        options = WindowOptions(selection, overlap, fast, skip_air, attention_raw, map_labels, precision, compile,
                                sw_batch_size, source, progress, status)

        threads = torch.get_num_threads()
        if self.device.type == CPU:
            torch.set_num_threads(window_threads())
        try:
            with torch.inference_mode():
                windows = self._run(arr, grid, constant, options)
        finally:
            torch.set_num_threads(threads)
        notices += windows.notices
        labels_oriented, map_labels_oriented, maps = windows.labels, windows.map_labels, windows.maps
        run, seconds = windows.run, windows.seconds

        def on_input(oriented: np.ndarray) -> np.ndarray:
            out = from_oriented(oriented, grid)
            return np.ascontiguousarray(out.T if kji else out)

        start = time.perf_counter()
        labelmap = on_input(labels_oriented)
        map_labelmap = None if map_labels_oriented is None else on_input(map_labels_oriented)
        seconds["map back"] += time.perf_counter() - start
        voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        counts = label_counts(labelmap, max(self.label_values) + 1)
        organs = []
        for name in selection.labelled:
            value = self.label_values[self.label_names.index(name)]
            organs.append({"name": name, "label": value, "color": list(color_for(name)),
                           "volume_ml": round(float(counts[value]) * voxel_ml, 3)})
            if counts[value] == 0 and run["windows"]:
                notices.append(f"{name}: not found in this volume (no voxels labelled)")
        map_names = selection.labelled + (selection.open_set if hasattr(self.network, "open_set_maps") else [])
        attention = AttentionMaps(map_names, maps, grid, kji, not attention_raw) if maps is not None else {}
        return SegmentationResult(labelmap, np.array(affine), organs, attention, notices, map_labelmap, run, seconds,
                                  windows.agreement)

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_affine(affine, source: str) -> np.ndarray:
        a = np.asarray(affine, dtype=float)
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise MosmosError(f"{source}: invalid voxel-to-RAS matrix (need a finite, invertible 4x4 affine)")
        return a

    def _check_volume(self, arr: np.ndarray, source: str, modality: str | None) -> tuple[list[str], bool]:
        """(notices, whether every voxel has the same value); a volume that cannot be segmented raises."""
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
        if lo == hi:  # nothing to tell apart: no windows run (_run), one notice
            notices.append(f"{source}: every voxel has the same value ({lo}): nothing to segment, the label map "
                           "is empty")
            return notices, True
        modality = (modality or "").upper() or None
        if modality in ("MRI",):
            modality = "MR"
        if self.modality and modality and modality != self.modality:
            notices.append(f"the model was trained on {self.modality} but {source} is {modality}: results may be poor")
        elif self.modality == "CT" and modality is None and lo >= 0 and hi > 0:
            notices.append(f"{source} has no negative values, unlike CT in Hounsfield units; this is a CT model: "
                           "results may be poor")
        return notices, False

    # ---------------------------------------------------------------------------------------
    def _model_image(self, arr: np.ndarray, grid: ModelGrid, device: torch.device,
                     body: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The scaled image on the model grid; with ``body``, also its body_blocks (BODY_BLOCK)."""
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
        if not body:
            return self.preprocessing.scale_intensity(image)
        blocks = body_blocks(image, self.preprocessing.body_threshold(image), BODY_BLOCK)
        return self.preprocessing.scale_intensity(image), blocks

    def _predictor(self, selection, stitched: list[int], raw: bool, precision: str, seconds: dict):
        """predict(windows) -> (logits, attention) for sliding_window; attention holds the classes in
        ``stitched`` (channel positions), then the open-set tags, up-sampled to the window; the
        network through self.forward (compiled as its plan says); adds its time to ``seconds["windows"]``."""
        net, forward, roi, device, epsilon = self.network, self.forward, self.roi_size, self.device, self.epsilon
        two_d = len(roi) == 2
        open_set = selection.open_set if hasattr(net, "open_set_maps") else []
        # to(), not contiguous(): a one-channel window is contiguous in both orders, and only a restrided
        # one makes the first convolutions (bf16) write channels-last
        layout = torch.channels_last_3d if self.channels_last else torch.preserve_format

        def timed(windows: torch.Tensor):
            start = time.perf_counter()
            try:
                return predict(windows)
            finally:
                seconds["windows"] += synchronized_clock(device) - start

        def predict(windows: torch.Tensor):
            x = windows[..., 0] if two_d else windows.to(memory_format=layout)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits, maps = forward(x)
                extra = net.open_set_maps(x, open_set) if open_set else None
            if two_d:
                logits = logits[..., None]
            if maps is None or not (stitched or open_set):
                return logits, None
            maps, size, parts = maps.float(), x.shape[2:], []
            if raw:
                parts += [upsample_maps(maps[:, stitched], size)] if stitched else []
                parts += [upsample_maps(extra.float(), size)] if open_set else []
            else:
                parts += [pta_probabilities(maps, size, epsilon)[:, stitched]] if stitched else []
                if open_set:  # two-class softmax (background, tag) = sigmoid of the logit difference
                    background = pta_logits(maps[:, :1], size, epsilon)
                    parts.append(torch.sigmoid(pta_logits(extra.float(), size, epsilon) - background))
            attention = torch.cat(parts, dim=1)
            return logits, attention[..., None] if two_d else attention

        return timed

    def _run(self, arr, grid, constant: bool, options: WindowOptions) -> WindowsRun:
        """The windows over the model grid, blended slab by slab into what the run keeps (KeptOutputs)."""
        selection, overlap, fast, skip_air = options.selection, options.overlap, options.fast, options.skip_air
        raw, map_labels, precision = options.attention_raw, options.map_labels, options.precision
        notices: list[str] = []
        run = {"precision": precision, "overlap": overlap, "windows": 0, "windows_skipped": 0, "compiled": False}
        seconds = {"resample": 0.0, "windows": 0.0, "stitch": 0.0, "map back": 0.0}
        selected = [self.label_names.index(n) for n in selection.labelled]
        # The maps' own label map needs every class; otherwise only the selected ones are stitched.
        stitched = list(range(len(self.label_values))) if map_labels else selected
        n_open = len(selection.open_set) if hasattr(self.network, "open_set_maps") else 0
        n_maps = len(stitched) + n_open
        attention_channels = [stitched.index(k) for k in selected] + [len(stitched) + j for j in range(n_open)]
        # Where no window runs: probabilities say background (1 for class 0, 0 for the organs and
        # open-set tags); raw scores take each map's lowest (None).
        unrun = None if raw else [float(k == 0) for k in stitched] + [0.0] * n_open
        roi = tuple(self.roi_size) + ((1,) if len(self.roi_size) == 2 else ())
        batch = options.sw_batch_size or (4 if self.device.type == CUDA else 1)
        lut = torch.zeros(len(self.label_values), dtype=torch.int64)
        for k in selected:
            lut[k] = self.label_values[k]
        # Where GPU memory runs out: the run again with one window at a time (the network's activations are
        # most of a run's memory), then also with the stitching buffers in CPU memory.
        attempts = [(batch, self.device)]
        if self.device.type == CUDA:
            attempts += [(1, self.device)] if batch > 1 else []
            attempts.append((1, torch.device(CPU)))
        for attempt, (batch, stitch) in enumerate(attempts):
            try:
                start = time.perf_counter()
                image, body = self._model_image(arr, grid, self.device, body=True)
                seconds["resample"] += synchronized_clock(self.device) - start
                shape = tuple(image.shape[1:])
                box, starts = (None, []) if constant else self._windows(body, shape, roi, overlap, fast, skip_air)
                if box is None and not constant:
                    notices.append(f"{options.source}: no body found (nothing above the air around it): "
                                   "the label map is empty")
                every = len(plan_windows(shape, roi, overlap))
                ran = every if starts is None else len(starts)
                run.update(windows=ran, windows_skipped=every - ran)
                kept = KeptOutputs(shape, box, lut, len(stitched) if map_labels else 0, attention_channels, unrun,
                                   np.uint8 if max(self.label_values) < 256 else np.uint16)
                if ran:
                    self.forward.plan(options.compile, self.device, ran, (batch, image.shape[0], *roi), precision,
                                      options.status)
                    predict = self._predictor(selection, stitched, raw, precision, seconds)
                    start, windows = time.perf_counter(), seconds["windows"]
                    sliding_window(image[(slice(None), *box)], roi, predict, len(self.label_values), n_maps, overlap,
                                   batch, stitch, options.progress, starts, unrun, on_slab=kept.slab)
                    seconds["stitch"] += synchronized_clock(self.device) - start - (seconds["windows"] - windows)
                    self.forward.finish(self.device)
                    run["compiled"] = self.forward.compiling
                    if self.forward.use and self.forward.failure:
                        notices.append(f"torch.compile failed ({self.forward.failure}): the windows ran uncompiled")
                del image
                start = time.perf_counter()
                labels, map_labels_on_input = kept.labels_on_input(grid)
                seconds["map back"] += time.perf_counter() - start
                start = time.perf_counter()
                agreements = {} if raw else kept.agreement([self.label_values[k] for k in selected],
                                                           selection.labelled)
                seconds["agreement"] = time.perf_counter() - start
                if attempt:
                    notices.append(f"GPU memory was short: {reduced}")
                return WindowsRun(labels, map_labels_on_input, kept.finished_maps(), notices, run, seconds,
                                  agreements)
            except torch.cuda.OutOfMemoryError:
                image = body = kept = None
            # here, not in the handler, whose traceback still held the failed attempt's GPU buffers
            torch.cuda.empty_cache()
            if attempt + 1 == len(attempts):
                raise MosmosError("GPU out of memory even with one window at a time and CPU stitching; "
                                  "use --device cpu")
            on_cpu = attempts[attempt + 1][1].type == CPU
            reduced = "windows ran one at a time" + (", outputs stitched on the CPU" if on_cpu else "")
            if options.status is not None:
                options.status(f"GPU memory was short: running again, {reduced}")
        raise AssertionError("unreachable")

    @staticmethod
    def _windows(body: torch.Tensor, shape, roi, overlap: float, fast: bool, skip_air: bool):
        """(box, starts): the part of the model grid the windows tile and the windows run there
        (None: every window). Default: the whole grid, on the grid of every window, without the
        windows holding no body block within SKIP_MARGIN blocks (unless not ``skip_air``). ``fast``:
        the body's bounding box, without the windows in it that hold no body voxel. No body at
        all: (None, [])."""
        box = body_box(body, BODY_BLOCK, shape, roi)
        if box is None:
            return None, []
        if not fast:
            whole = tuple(slice(0, n) for n in shape)
            if not skip_air:
                return whole, None
            return whole, plan_windows(shape, roi, overlap, dilate_blocks(body, SKIP_MARGIN), BODY_BLOCK)
        sub = body[tuple(slice(b.start // BODY_BLOCK, -(-b.stop // BODY_BLOCK)) for b in box)]
        return box, plan_windows([b.stop - b.start for b in box], roi, overlap, sub, BODY_BLOCK)


@dataclass(frozen=True)
class WindowOptions:
    """How Segmenter.segment runs the windows (its keyword options, checked): the organs ``selection``
    (tagselect), ``overlap``, ``fast``, ``skip_air``, ``attention_raw``, ``map_labels``, the resolved
    ``precision`` ("fp32" | "bf16"), ``compile``, ``sw_batch_size`` (None: 4 on a GPU, 1 on the CPU), the
    ``source``'s name for messages, and the ``progress`` and ``status`` callbacks."""

    selection: object
    overlap: float
    fast: bool
    skip_air: bool
    attention_raw: bool
    map_labels: bool
    precision: str
    compile: str
    sw_batch_size: int | None
    source: str
    progress: Progress | None
    status: Callable[[str], None] | None


@dataclass
class WindowsRun:
    """What Segmenter._run gives back: the label maps on the oriented input grid (``map_labels`` None unless
    asked for), the attention ``maps`` on the model grid (or None), ``notices``, the statistics
    SegmentationResult reports (``run``, ``seconds``) and each organ's ``agreement`` with its map."""

    labels: np.ndarray
    map_labels: np.ndarray | None
    maps: torch.Tensor | None
    notices: list[str]
    run: dict
    seconds: dict
    agreement: dict


def label_argmax(scores: torch.Tensor, lut: torch.Tensor, out: np.ndarray) -> None:
    """``out[...] = lut[scores.argmax(0)]`` (the first class of the highest score), a class at a time: torch's
    argmax over the first axis of a slab cut from the stitching buffers took 46 % of the stitching of a full CT
    (1.3 s a slab on 2 cores), elementwise comparisons a tenth of that."""
    best = scores[0].clone()
    values = torch.full(best.shape, int(lut[0]), dtype=torch.int32 if out.dtype != np.uint8 else torch.uint8,
                        device=scores.device)
    better = torch.empty(best.shape, dtype=torch.bool, device=scores.device)
    for k in range(1, scores.shape[0]):
        torch.gt(scores[k], best, out=better)
        values.masked_fill_(better, int(lut[k]))
        torch.maximum(best, scores[k], out=best)
    out[...] = values.cpu().numpy()


class KeptOutputs:
    """What a run keeps of the blend, slab by slab (sliding.SlabSink), on the whole model grid (CPU):
    the label map (argmax over every class, as label values; background outside ``box`` and where no
    window ran), with ``n_map_classes`` the maps' own label map (argmax over that many map classes),
    and the attention ``channels`` of the maps: probabilities in MAP_DTYPE, each taking its ``unrun``
    value where no window ran; raw scores (``unrun`` None) in float32, taking their lowest score there.
    """

    def __init__(self, shape, box, lut: torch.Tensor, n_map_classes: int, channels: list[int],
                 unrun: list[float] | None, label_dtype):
        self.box, self.lut, self.channels, self.n_map_classes = box, lut, channels, n_map_classes
        self.labels = np.zeros(shape, label_dtype)
        self.map_labels = np.zeros(shape, label_dtype) if n_map_classes else None
        self.maps = self.unset = None
        if channels:
            fill = [unrun[c] for c in channels] if unrun is not None else [0.0] * len(channels)
            dtype = MAP_DTYPE if unrun is not None else torch.float32
            self.maps = torch.tensor(fill, dtype=dtype).view(-1, 1, 1, 1).expand(len(channels), *shape).clone()
            if unrun is None:
                self.unset = torch.ones(shape, dtype=torch.bool)

    def slab(self, part: tuple[slice, ...], logits: torch.Tensor, maps: torch.Tensor | None,
             uncovered: torch.Tensor) -> None:
        where = tuple(slice(b.start + p.start, b.start + p.stop) for b, p in zip(self.box, part))
        label_argmax(logits, self.lut, self.labels[where])
        if maps is None:
            return
        if self.map_labels is not None:
            label_argmax(maps[:self.n_map_classes], self.lut, self.map_labels[where])
        if self.maps is not None:
            self.maps[(slice(None), *where)] = maps[self.channels].cpu()
            if self.unset is not None:
                self.unset[where] = uncovered.cpu()

    def labels_on_input(self, grid: ModelGrid) -> tuple[np.ndarray, np.ndarray | None]:
        """(label map, the maps' own or None) on the oriented input grid: each input voxel takes the
        label of its nearest model voxel."""
        on_input = np.ix_(*nearest_model_indices(grid))
        return self.labels[on_input], None if self.map_labels is None else self.map_labels[on_input]

    def agreement(self, values: list[int], names: list[str]) -> dict:
        """name -> qc.agreement.Agreement of each organ's segment (label value ``values[i]``, attention channel
        ``i``) with its probability map, on the model grid where both already are: the map's own segment is
        where it gives the organ P >= 0.5 (in the softmax over all classes that voxel's argmax is the organ),
        so no other class need be stitched and nothing is resampled (negligible next to the run)."""
        if self.maps is None:
            return {}
        boxes = ndimage.find_objects(self.labels)   # uint8 or uint16 label values, no copy
        out = {}
        for channel, (value, name) in enumerate(zip(values, names)):
            box = boxes[value - 1] if 0 < value <= len(boxes) else None
            if box is None:
                continue
            probability = self.maps[(channel, *box)].float().numpy()
            out[name] = agreement(self.labels[box] == value, probability >= 0.5, probability)
        return out

    def finished_maps(self) -> torch.Tensor | None:
        if self.unset is not None and self.unset.any() and not self.unset.all():
            fill_lowest(self.maps, self.unset)
        return self.maps
