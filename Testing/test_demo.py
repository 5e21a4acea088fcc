"""`mosmos demo --quick`: the README's first command, end to end on generated data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from PIL import Image

from mosmos.cli import main
from mosmos.experiments.demo import DEMO_TAGS


def test_quick_demo_writes_every_promised_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and "total time:" in printed and "| **mean** |" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["dice"]) == {"mosmos", "random"}
    for init in ("mosmos", "random"):
        assert set(summary["dice"][init]) <= set(DEMO_TAGS)
        assert all(0.0 <= d <= 1.0 for d in summary["dice"][init].values() if d == d)

    ct = nib.load(out / "held_out_ct.nii.gz")
    seg = nib.load(out / "segmentation.nii.gz")
    assert seg.shape == ct.shape and np.allclose(seg.affine, ct.affine)
    for tag in DEMO_TAGS:
        amap = np.asarray(nib.load(out / "attention" / f"{tag.replace(' ', '_')}.nii.gz").dataobj)
        assert amap.shape == ct.shape and 0.0 <= amap.min() and amap.max() <= 1.0
    with Image.open(out / "figure.png") as fig:
        assert fig.size[0] > 3 * fig.size[1]  # one panel per tag beside the CT, reference and segmentation
    assert (out / "dice.md").read_text().startswith("| organ |")
    assert (out / "pretrain" / "pretrained.safetensors").exists()


def test_demo_refuses_a_folder_that_is_not_its_own(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path), "--quick", "--no-progress"]) == 1
    assert "not an earlier demo output" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
