"""The fast CPU path of `mosmos segment` against fp32 with every window run: bf16 where the CPU
computes it natively, windows tiling only the body's box, on a tiny MOSMOS-UNETR fine-tuned on
phantoms with air beside the body (so that it has seen air).

Speed: the tiny recipe of mosmos.demo_models (4.5 mm, 32^3 windows); each phantom is padded with
air to twice its width, so that about half the windows hold air only."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mosmos.cli import main
from mosmos.data.phantoms import make_phantom, write_decathlon_dataset
from mosmos.demo_models import tiny_finetune_config
from mosmos.inference import Segmenter
from mosmos.inference import precision as precision_mod
from mosmos.metrics import dice_scores

AIR_WIDTH = 2  # the padded volume is this many body widths along x


def with_air(image: np.ndarray, fill) -> np.ndarray:
    out = np.full((image.shape[0] * AIR_WIDTH, *image.shape[1:]), fill, image.dtype)
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
            padded = with_air(arr, -1000 if fill is None else fill)
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


def test_bf16_keeps_the_fp32_labels_and_the_body_box_drops_air_windows(trained, monkeypatch):
    seg, image, affine, _ = trained
    tags = "liver, spleen, right kidney, left kidney"
    n = max(seg.label_values) + 1
    plain = seg.segment(image, affine, tags=tags, precision="fp32", skip_outside_body=False)
    assert plain.run["windows_skipped"] == 0 and len(np.unique(plain.labelmap)) > 1

    # bf16 (where native) against fp32, every window run. Labels only: this model's maps are nearly
    # flat, so min-max normalisation magnifies bf16's rounding (measured up to 0.25; issue-18 note).
    bf16 = seg.segment(image, affine, tags=tags, precision="auto", skip_outside_body=False)
    assert bf16.run["precision"] == ("bf16" if precision_mod.cpu_has_native_bf16() else "fp32")
    same, dice = agreement(bf16.labelmap, plain.labelmap, n)
    assert same >= 0.995 and dice.min() >= 0.99, (same, dice)

    # The default path tiles the body's box only: the air half's windows are not run and it is
    # background. (Inside the box the windows sit elsewhere than in the full tiling; this 30-step
    # model, trained with the whole body at one place in its window, is not translation-invariant,
    # so its labels there are not compared: see the issue-18 note.)
    default = seg.segment(image, affine, tags=tags)
    assert default.run["windows_skipped"] >= default.run["windows"] > 0
    air = image.shape[0] // AIR_WIDTH + 8  # beyond the body, its box and a block's rounding
    assert not default.labelmap[air:].any() and default.labelmap[:air].any()

    # bf16 asked for on a CPU without native bf16: fp32, said so
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    assert precision_mod.resolve_precision("auto", seg.device) == ("fp32", [])
    chosen, notes = precision_mod.resolve_precision("bf16", seg.device)
    assert chosen == "fp32" and "no native bf16" in notes[0]


def test_a_body_filling_the_volume_is_segmented_exactly_as_with_every_window(trained):
    seg, image, affine, _ = trained
    body = image[20:76, 30:60]  # inside the phantom's body outline: the box is the whole volume
    plain = seg.segment(body, affine, tags="liver", precision="fp32", skip_outside_body=False)
    boxed = seg.segment(body, affine, tags="liver", precision="fp32")
    assert boxed.run == plain.run
    np.testing.assert_array_equal(boxed.labelmap, plain.labelmap)
    np.testing.assert_allclose(boxed.attention["liver"], plain.attention["liver"], atol=1e-6)


def test_all_air_and_constant_volumes_give_an_empty_label_map_and_one_notice(trained, capsys):
    seg, image, affine, root = trained
    air = np.full((60, 50, 40), -1000, np.int16)
    air += np.random.default_rng(2).normal(0, 15, air.shape).astype(np.int16)
    res = seg.segment(air, affine, tags="liver")
    assert res.run["windows"] == 0 and not res.labelmap.any() and res.labelmap.shape == air.shape
    assert any("no body found" in n for n in res.notices)
    constant = root / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 10), 7, np.int16), affine), constant)
    out = root / "constant_seg.nii.gz"
    code = main(["segment", str(constant), "--model", seg.model_file, "--output", str(out), "--json-progress"])
    captured = capsys.readouterr()
    assert code == 0 and not np.asarray(nib.load(out).dataobj).any()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "constant" in warnings[0]
    run = [json.loads(line) for line in captured.out.splitlines() if '"run"' in line]
    assert run and run[0]["windows"] == 0 and run[0]["precision"] in ("fp32", "bf16")
