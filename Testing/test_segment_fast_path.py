"""The CPU paths of `mosmos segment` against fp32 with every window run: the default (bf16 where
the CPU computes it natively, windows far from the body left out on the same grid) and --fast
(windows tiling only the body's box), on a tiny MOSMOS-UNETR fine-tuned on phantoms with air beside
the body (so that it has seen air).

Speed: the tiny recipe of mosmos.experiments.recipes (4.5 mm, 32^3 windows); each training phantom is padded
with air to twice its width, the test volume to three times (half its windows hold air only)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mosmos.cli import main
from mosmos.data.phantoms import make_phantom, write_decathlon_dataset
from mosmos.errors import MosmosError
from mosmos.experiments.recipes import tiny_finetune_config
from mosmos.inference import Segmenter
from mosmos.inference import precision as precision_mod
from mosmos.evaluation.metrics import dice_scores

AIR_WIDTH = 3  # the test volume is this many body widths along x (training phantoms: 2)


def with_air(image: np.ndarray, fill, widths: int = AIR_WIDTH) -> np.ndarray:
    out = np.full((image.shape[0] * widths, *image.shape[1:]), fill, image.dtype)
    out[:image.shape[0]] = image
    return out


def train_with_air(root: Path) -> Path:
    """The tiny recipe on two phantoms with air beside the body; returns the model file."""
    from mosmos.train.finetune import finetune

    data = root / "data"
    write_decathlon_dataset(data, 2, 0, seed=0)
    rng = np.random.default_rng(0)
    for sub, fill in (("imagesTr", None), ("labelsTr", 0)):
        for path in sorted((data / sub).glob("*.nii.gz")):
            img = nib.load(path)
            arr = np.asarray(img.dataobj)
            padded = with_air(arr, -1000 if fill is None else fill, 2)
            if fill is None:  # scanner noise in the air
                padded[arr.shape[0]:] += rng.normal(0, 15, padded[arr.shape[0]:].shape).astype(arr.dtype)
            nib.save(nib.Nifti1Image(padded, img.affine, img.header), path)
    return finetune(tiny_finetune_config(data, root / "out", 30), progress=False)


def phantom_with_air(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    case = make_phantom([seed, 0], shape=(96, 90, 60))  # one 32-voxel window across y and z
    image = with_air(np.round(case.image).astype(np.int16), -1000)
    width = case.image.shape[0]
    image[width:] += np.random.default_rng(seed).normal(0, 15, image[width:].shape).astype(np.int16)
    return image, case.affine


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    image, affine = phantom_with_air()
    return Segmenter(train_with_air(root), device="cpu"), image, affine, root


def agreement(a: np.ndarray, b: np.ndarray, organs: int) -> tuple[float, np.ndarray]:
    dice = dice_scores(a, b, organs)
    return float((a == b).mean()), dice[~np.isnan(dice)]


def test_the_default_mode_keeps_the_fp32_labels_of_every_window(trained):
    """bf16 keeps the fp32 labels over the whole volume; leaving out the windows far from the body
    keeps them at every body voxel (bit for bit in fp32). In the air the two may differ only where a
    model labels organs in windows of pure air: this briefly trained test model does (tens of thousands
    of liver voxels in the air third with every window run), which the skipping removes; see the README
    for the figures over the whole volume."""
    seg, image, affine, _ = trained
    tags = "liver, spleen, right kidney, left kidney"
    organs = ("liver", "spleen", "right kidney", "left kidney")
    n = max(seg.label_values) + 1
    plain = seg.segment(image, affine, tags=tags, precision="fp32", skip_air=False)
    assert plain.run["windows_skipped"] == 0 and len(np.unique(plain.labelmap)) > 2
    assert seg.network.embedder is None  # organs the model knows: its text tower is never read

    # bf16 (where native) with every window, against fp32, over the whole volume
    every = seg.segment(image, affine, tags=tags, skip_air=False)
    assert every.run["precision"] == ("bf16" if precision_mod.cpu_has_native_bf16() else "fp32")
    same, dice = agreement(every.labelmap, plain.labelmap, n)
    assert same >= 0.995 and dice.min() >= 0.99, (same, dice)
    for organ in organs:  # the maps are computed in fp32 (next test): only the tokens' rounding is left
        np.testing.assert_allclose(every.attention[organ], plain.attention[organ], atol=1e-4)

    # The default mode (bf16, the windows far from the body left out) at the body's voxels
    default = seg.segment(image, affine, tags=tags)
    assert default.run["precision"] == every.run["precision"]
    assert default.run["windows"] + default.run["windows_skipped"] == plain.run["windows"]
    assert default.run["windows_skipped"] >= plain.run["windows"] // 3, default.run
    body = image > -500
    same, dice = agreement(default.labelmap[body], plain.labelmap[body], n)
    assert same >= 0.995 and dice.min() >= 0.99, (same, dice)
    for organ in organs:
        np.testing.assert_allclose(default.attention[organ][body], plain.attention[organ][body], atol=1e-2)

    # Skipping alone (fp32 both): every body voxel blends the same windows with the same weights;
    # a voxel that only left-out windows cover is background, its organ probabilities 0
    skipped = seg.segment(image, affine, tags=tags, precision="fp32")
    assert skipped.run == {**default.run, "precision": "fp32"}
    np.testing.assert_array_equal(skipped.labelmap[body], plain.labelmap[body])
    for organ in organs:
        np.testing.assert_array_equal(skipped.attention[organ][body], plain.attention[organ][body])
    far = image.shape[0] - 16  # beyond the last window run (roi 32 at 4.5 mm = 96 input voxels)
    assert not skipped.labelmap[far:].any() and not skipped.attention["liver"][far:].any()


def test_the_maps_and_the_patch_embedding_are_computed_in_fp32_under_bf16(trained):
    """Under bf16 autocast the matrix products of the ViT blocks and the image decoder run in bf16,
    but the pixel–tag maps (few queries; their rounding, amplified by 1/epsilon, moved the demo
    model's overlays by 2.2e-2) and the patch embedding stay fp32, so that the ViT's residual
    stream stays fp32: the same tokens give the same maps, bit for bit."""
    net = trained[0].network.network
    x = torch.rand(1, 1, *net.img_size)
    tokens, _, grid = net.encode(x)
    expected = net.pixel_tag_maps(tokens, grid)
    dtypes = {}

    def record(name):
        def hook(module, args, out) -> None:
            dtypes[name] = out.dtype
        return hook
    hooks = [module.register_forward_hook(record(name))
             for name, module in (("patch", net.patch_embed), ("mlp", net.blocks[0].mlp))]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = net.pixel_tag_maps(tokens, grid)
            encoded, _, _ = net.encode(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert maps.dtype == torch.float32 and torch.equal(maps, expected)
    assert dtypes == {"patch": torch.float32, "mlp": torch.bfloat16} and encoded.dtype == torch.float32


def test_fast_drops_air_windows_and_bf16_falls_back_to_fp32(trained, monkeypatch):
    seg, image, affine, _ = trained
    tags = "liver, spleen, right kidney, left kidney"
    # --fast tiles the body's box only: the air half's windows are not run; there the labels are
    # background, an organ's probability is 0 and a raw map takes its lowest score. (Its labels
    # inside the box are not compared: this 30-step model, trained with the body at one place in
    # its window, is not translation-invariant, and the box moves the windows; see the README.)
    fast = seg.segment(image, affine, tags=tags, fast=True)
    assert fast.run["overlap"] == 0.25 and fast.run["windows_skipped"] > 0 and fast.run["windows"] > 0
    air = image.shape[0] // AIR_WIDTH + 8  # beyond the body, its box and a block's rounding
    assert not fast.labelmap[air:].any() and fast.labelmap[:air].any()
    assert not fast.attention["liver"][air:].any() and fast.attention["liver"][:air].max() > 0
    raw = seg.segment(image, affine, tags="liver", fast=True, attention_raw=True).attention["liver"]
    np.testing.assert_allclose(raw[air:], raw.min(), atol=1e-5)

    # bf16 asked for on a CPU without native bf16: fp32, said so
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    assert precision_mod.resolve_precision("auto", seg.device) == ("fp32", [])
    chosen, notes = precision_mod.resolve_precision("bf16", seg.device)
    assert chosen == "fp32" and "no native bf16" in notes[0]
    quiet = seg.segment(image[:96], affine, tags="liver")  # auto: fp32 silently, stated in the run record
    assert quiet.run["precision"] == "fp32" and not any("bf16" in n for n in quiet.notices)


def test_a_body_filling_the_volume_is_segmented_by_fast_as_with_every_window(trained):
    seg, image, affine, _ = trained
    body = image[20:76, 30:60]  # inside the phantom's body outline: the box is the whole volume
    plain = seg.segment(body, affine, tags="liver", precision="fp32")
    boxed = seg.segment(body, affine, tags="liver", precision="fp32", fast=True, overlap=0.5)
    assert boxed.run == plain.run
    np.testing.assert_array_equal(boxed.labelmap, plain.labelmap)
    np.testing.assert_allclose(boxed.attention["liver"], plain.attention["liver"], atol=1e-6)


def test_an_all_air_volume_gives_an_empty_label_map_and_one_warning(trained, capsys):
    seg, image, affine, root = trained
    air = np.full((60, 50, 40), -1000, np.int16)
    air += np.random.default_rng(2).normal(0, 15, air.shape).astype(np.int16)
    volume = root / "air.nii.gz"
    nib.save(nib.Nifti1Image(air, affine), volume)
    out = root / "air_seg.nii.gz"
    code = main(["segment", str(volume), "--model", seg.model_file, "--output", str(out), "--json-progress"])
    captured = capsys.readouterr()
    assert code == 0 and not np.asarray(nib.load(out).dataobj).any()
    assert np.asarray(nib.load(out).dataobj).shape == air.shape
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no body found" in warnings[0]
    run = [json.loads(line) for line in captured.out.splitlines() if '"run"' in line]
    assert run and run[0]["windows"] == 0 and run[0]["precision"] in ("fp32", "bf16")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_window_sized_buffers_are_reused_rather_than_mapped_afresh():
    """`mosmos segment` keeps blocks of a window's activations on the heap (inference/allocator.py):
    a freed 64 MB tensor's pages come back without faulting each page in again."""
    from mosmos.inference.allocator import keep_window_buffers

    def faults_of_a_fresh_64mb_tensor() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 << 20)  # 64 MB, touched, freed
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert keep_window_buffers()
    for _ in range(3):  # the heap grows to hold it (glibc's default maps and unmaps it every time)
        faults_of_a_fresh_64mb_tensor()
    assert faults_of_a_fresh_64mb_tensor() < (64 << 20) // 4096 // 10  # under a tenth of its 16,384 pages


@pytest.mark.parametrize("shape, batch", [((30, 35, 70), 2), ((70, 12, 33), 3), ((10, 40, 20), 1)])
def test_the_slab_by_slab_blend_is_the_whole_volume_blend(shape, batch):
    """sliding_window keeps buffers one window deep along the longest axis; its result is the plain
    gaussian-weighted mean over the windows run (padding, skipped windows and batches included)."""
    from mosmos.inference.sliding import gaussian_importance, plan_windows, sliding_window

    roi = (16, 16, 16)
    image = torch.randn(1, *shape)

    def predict(x):
        return torch.cat([x, -x, x.sin()], 1), x.cos()

    starts = plan_windows(shape, roi, 0.5)[::2]  # every other window left out
    logits, maps = sliding_window(image, roi, predict, 3, 1, 0.5, batch, starts=starts, uncovered_maps=[0.25])

    pad = [max(0, r - s) for r, s in zip(roi, shape)]
    padded = torch.nn.functional.pad(image, [q for p in reversed(pad) for q in (p // 2, p - p // 2)])
    total = torch.zeros(4, *padded.shape[1:], dtype=torch.float64)
    weight = torch.zeros(padded.shape[1:], dtype=torch.float64)
    g = gaussian_importance(roi, "cpu").double()
    for start in starts:
        reg = tuple(slice(s, s + r) for s, r in zip(start, roi))
        out = torch.cat(predict(padded[(slice(None), *reg)][None]), 1)[0].double()
        total[(slice(None), *reg)] += out * g
        weight[reg] += g
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, shape))
    total, weight = total[(slice(None), *crop)], weight[crop]
    covered = weight > 0
    expected = total / weight.clamp(min=1e-30)
    assert not covered.all()
    np.testing.assert_allclose(logits[:, covered], expected[:3, covered], atol=1e-5)
    np.testing.assert_allclose(maps[0][covered], expected[3][covered], atol=1e-5)
    assert (logits[0][~covered] == 1).all() and not logits[1:, ~covered].any() and (maps[0][~covered] == 0.25).all()


def test_the_label_map_is_the_argmax_of_the_whole_volume_blend_bit_for_bit(trained):
    """The slab-by-slab labels (a class at a time, label_argmax) equal torch's argmax of the whole-volume blend,
    mapped to the input grid by nearest model voxel: the label map of the eager fp32 path, voxel for voxel."""
    from mosmos.inference.geometry import from_oriented, model_grid, nearest_model_indices
    from mosmos.inference.segmenter import label_argmax
    from mosmos.inference.sliding import sliding_window
    from mosmos.inference.tagselect import select_tags

    seg, image, affine, _ = trained
    tags = "liver, spleen, right kidney, left kidney"
    result = seg.segment(image, affine, tags=tags, precision="fp32", compile="off")
    assert result.run["windows_skipped"] > 0 and set(result.seconds) == {"resample", "windows", "stitch", "map back",
                                                                          "agreement"}

    selection = select_tags(tags, seg.organ_names, False)
    selected = [seg.label_names.index(n) for n in selection.labelled]
    grid = model_grid(image.shape, affine, seg.preprocessing.spacing)
    with torch.inference_mode():
        model_image, body = seg._model_image(image, grid, seg.device, body=True)
        shape = tuple(model_image.shape[1:])
        box, starts = seg._windows(body, shape, seg.roi_size, 0.5, False, True)
        predict = seg._predictor(selection, selected, False, "fp32", {"windows": 0.0})
        logits, _ = sliding_window(model_image[(slice(None), *box)], seg.roi_size, predict, len(seg.label_values),
                                   len(selected), 0.5, 1, starts=starts, uncovered_maps=[1.0] + [0.0] * 3)
    lut = torch.zeros(len(seg.label_values), dtype=torch.int64)
    for k in selected:
        lut[k] = seg.label_values[k]
    labels = np.zeros(shape, np.uint8)
    labels[box] = lut[logits.argmax(0)].numpy()
    expected = from_oriented(labels[np.ix_(*nearest_model_indices(grid))], grid)
    assert len(np.unique(expected)) >= 3  # background and two organs at least (the tiny model misses some)
    np.testing.assert_array_equal(result.labelmap, expected)

    # ties go to the first class, as torch.argmax's; label values above 255 in wider label maps
    scores = torch.tensor([[[1.0, 2.0, 3.0]], [[1.0, 5.0, 3.0]], [[0.5, 5.0, 4.0]]])[..., None].expand(3, 1, 3, 2)
    for values, dtype in (([0, 7, 9], np.uint8), ([0, 300, 301], np.uint16)):
        out = np.zeros((1, 3, 2), dtype)
        label_argmax(scores, torch.tensor(values), out)
        np.testing.assert_array_equal(out, np.asarray(values)[scores.argmax(0).numpy()])


def test_compile_auto_compiles_only_on_a_warm_cache_that_pays_and_a_failed_compile_runs_eagerly(
        trained, monkeypatch, tmp_path):
    """auto never compiles on a cold inductor cache (a compile then costs more than a full CT's windows on 2
    cores); a compiled run leaves a record in the cache folder, and with it auto compiles when the windows
    left save more than the warm compile costs. Where compiling fails (no C++ compiler, as in Slicer on
    Windows) the windows run eagerly, and asked for explicitly, a notice says so. The compiler here is a
    stand-in that returns the network itself (the real one is the next test's)."""
    from mosmos.inference import compilation

    seg, part, affine, _ = trained
    opts = {"tags": "liver", "overlap": 0.8}  # enough windows for two timed ones and three compiled
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = seg.segment(part, affine, **opts, compile="off")
    assert eager.run["compiled"] is False and eager.run["windows"] >= compilation.TIMED_WINDOWS + 3

    compiles = []

    def stand_in(network, **kwargs):
        compiles.append(kwargs)
        return network
    monkeypatch.setattr(compilation.torch, "compile", stand_in)
    statuses = []
    cold = Segmenter(seg.model_file, device="cpu").segment(part, affine, **opts, status=statuses.append)
    assert cold.run == eager.run and not compiles and not statuses and not list(tmp_path.rglob("*.json"))
    assert not compilation.pays_to_compile(1.9, 174, None)  # a cold cache never pays, however long the run
    record = {"compiled_window_s": 0.7, "warm_compile_s": 7.0}
    assert compilation.pays_to_compile(1.9, 174, record) and not compilation.pays_to_compile(1.9, 5, record)
    assert not compilation.pays_to_compile(0.6, 174, record)

    on = Segmenter(seg.model_file, device="cpu").segment(part, affine, **opts, compile="on")
    assert on.run == {**eager.run, "compiled": True} and compiles == [{"dynamic": False}]
    records = list((tmp_path / "inductor" / "mosmos").glob("*.json"))
    assert len(records) == 1 and set(json.loads(records[0].read_text())) == {"compiled_window_s", "cold_compile_s"}
    np.testing.assert_array_equal(on.labelmap, eager.labelmap)

    # warm: the windows pay for a free compile; the first two are timed eagerly
    records[0].write_text(json.dumps({"compiled_window_s": 0.0, "warm_compile_s": 0.0}))
    warm = Segmenter(seg.model_file, device="cpu")
    auto = warm.segment(part, affine, **opts, status=statuses.append)
    assert auto.run["compiled"] is True and statuses == [compilation.COMPILING] and len(compiles) == 2
    assert len(warm.forward.eager_s) == compilation.TIMED_WINDOWS
    assert json.loads(records[0].read_text())["warm_compile_s"] >= 0  # the record now holds a warm compile's cost
    other = Segmenter(seg.model_file, device="cpu").segment(part, affine, **opts, precision="fp32")
    if eager.run["precision"] != "fp32":  # another number format is other compiled code: cold again
        assert other.run["compiled"] is False

    def no_compiler(*a, **k):
        def fails(x):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return fails
    monkeypatch.setattr(compilation.torch, "compile", no_compiler)
    statuses.clear()
    fallback = Segmenter(seg.model_file, device="cpu").segment(part, affine, **opts, compile="on",
                                                               status=statuses.append)
    assert statuses == [compilation.COMPILING] and "compiling the network" in statuses[0]
    assert fallback.run["compiled"] is False
    assert "torch.compile failed (RuntimeError: InductorError" in fallback.notices[-1]
    np.testing.assert_array_equal(fallback.labelmap, eager.labelmap)
    with pytest.raises(MosmosError, match="compile: expected one of auto, on, off"):
        seg.segment(part, affine, compile="yes")


def test_compiled_windows_give_the_labels_of_eager_ones(trained):
    """torch.compile (inductor) runs the same operations in the same number format: the labels agree
    with the eager run's as bf16's do with fp32's. (Compiling the tiny model takes about a minute when
    inductor's cache is cold, 10 s when warm.)"""
    seg, image, affine, _ = trained
    part = image[:96]
    eager = seg.segment(part, affine, tags="liver", compile="off")
    compiled = seg.segment(part, affine, tags="liver", compile="on")
    assert compiled.run == {**eager.run, "compiled": True}
    same, dice = agreement(compiled.labelmap, eager.labelmap, max(seg.label_values) + 1)
    assert same >= 0.995 and dice.min() >= 0.99, (same, dice)
    np.testing.assert_allclose(compiled.attention["liver"], eager.attention["liver"], atol=1e-3)


def test_windows_run_channels_last_with_the_outputs_of_the_network_as_trained(trained):
    """On the CPU the 3D network runs channels-last (inference/layout.py): its instance norms become the
    equal group norms, its outputs stay those of the network as trained, and in a run the full-size decoder (the
    first convolution, the output block's input with the maps joined) is channels-last wherever the CPU's
    convolutions keep that layout."""
    from mosmos.inference.layout import channels_last
    from mosmos.inference.network import load_segmentation_model

    seg, image, affine, _ = trained
    net = seg.network.network
    assert not any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    as_trained, _ = load_segmentation_model(seg.model_file)
    x = torch.rand(2, 1, *seg.roi_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = as_trained(x)
        got = channels_last(as_trained)(x.to(memory_format=torch.channels_last_3d))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    seen = {}

    def record(name):
        def hook(module, args, out) -> None:
            t = args[0] if name == "output block input" else out
            seen[name] = t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()
        return hook
    hooks = [net.encoder1.layer.conv1.register_forward_hook(record("first convolution")),
             net.out.register_forward_hook(record("output block input"))]
    # bf16 where the CPU computes it natively, else fp32. Whether a 3D convolution hands back channels-last is
    # the CPU's kernels' choice: oneDNN's do on an Intel Xeon with AVX-512; on a 2-core AMD EPYC without it a plain
    # Conv3d returns contiguous outputs in fp32 and bf16 alike. The network must keep whatever layout they give.
    precision = "bf16" if precision_mod.cpu_has_native_bf16() else "fp32"
    probe = torch.nn.Conv3d(4, 4, 3, padding=1).to(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        kernels_keep = probe(torch.rand(1, 4, 8, 8, 8).to(memory_format=torch.channels_last_3d)).is_contiguous(
            memory_format=torch.channels_last_3d)
    try:
        run = seg.segment(image[:96], affine, tags="liver", precision=precision, compile="off").run
    finally:
        for hook in hooks:
            hook.remove()
    assert run["precision"] == precision
    assert seen == {"first convolution": kernels_keep, "output block input": kernels_keep}


def test_windows_keep_the_thread_share_omp_num_threads_pins(trained, monkeypatch):
    """A process whose OMP_NUM_THREADS pins its share of the cores (test workers, torchrun ranks, the study's
    parallel runs) runs its windows at that share; one that does not uses every core it may, and either way
    the caller's setting is back afterwards."""
    from mosmos.inference.segmenter import cpu_count

    seg, image, affine, _ = trained
    seen = []
    forward = seg.network.forward
    monkeypatch.setattr(seg.network, "forward", lambda x, *a, **k: seen.append(torch.get_num_threads()) or
                        forward(x, *a, **k))
    part = image[:96, :, :32]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    seg.segment(part, affine, tags="liver", compile="off")
    assert seen and set(seen) == {1}
    seen.clear()
    monkeypatch.delenv("OMP_NUM_THREADS")
    seg.segment(part, affine, tags="liver", compile="off")
    assert set(seen) == {cpu_count()} and torch.get_num_threads() == 1
