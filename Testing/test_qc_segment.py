"""`mosmos segment` carries each organ's QC: printed beside its volume, in --volumes (.json and .csv) and in
--json-progress's "done" event. The stub network labels an 18 mL cube (about 16 mL on its grid) "liver" and finds no spleen: a liver far
below the adult range fails, the absent spleen fails as not found."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from inference_stub import ThresholdNet, write_stub_model

from mosmos.cli import main
from mosmos.files.modelfile import read_header, save_model
from mosmos.inference import register_architecture
from mosmos.inference.segmenter import Segmenter
from mosmos.qc.agreement import agreement
from mosmos.qc.thumbnails import OUTLINE

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("qcseg")
    vol = np.full((48, 40, 24), -1000, np.int16)
    vol[10:30, 8:28, 5:15] = 1075
    nib.save(nib.Nifti1Image(vol, AFFINE), root / "ct.nii.gz")
    return write_stub_model(root / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3)), root / "ct.nii.gz"


def test_status_beside_each_volume_in_every_output(files, tmp_path, capsys):
    model, image = files
    common = [str(image), "--model", str(model), "--device", "cpu", "--output"]
    assert main(["segment", *common, str(tmp_path / "a.nii.gz"), "--volumes", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"liver: [\d.]+ mL \(label 1\) fail: volume [\d.]+ mL is below the plausible range of liver", out)
    assert "spleen: 0.0 mL (label 2) fail: not found in the scan" in out
    organs = {o["name"]: o for o in json.loads((tmp_path / "v.json").read_text())["organs"]}
    assert organs["liver"]["status"] == "fail" and "adult profile" in organs["liver"]["reasons"][0]
    assert organs["spleen"]["reasons"] == ["not found in the scan"]

    assert main(["segment", *common, str(tmp_path / "b.nii.gz"), "--volumes", str(tmp_path / "v.csv"),
                 "--qc-profile", "phantom"]) == 0
    rows = {r["name"]: r for r in csv.DictReader((tmp_path / "v.csv").open())}
    assert rows["liver"]["status"] == "fail" and "phantom profile" in rows["liver"]["reasons"]
    capsys.readouterr()

    assert main(["segment", *common, str(tmp_path / "c.nii.gz"), "--json-progress"]) == 0
    done = [json.loads(line) for line in capsys.readouterr().out.splitlines()][-1]
    assert done["event"] == "done" and {o["name"]: o["status"] for o in done["organs"]} == {"liver": "fail",
                                                                                          "spleen": "fail"}


def test_a_cohorts_cases_csv_names_the_organs_to_check(files, tmp_path):
    model, image = files
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.nii.gz").write_bytes(image.read_bytes())
    assert main(["segment", "--inputs", str(inputs), "--out", str(tmp_path / "out"), "--model", str(model),
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "cases.csv").open()))
    assert [(r["case"], r["status"], r["qc_check"], r["qc_fail"]) for r in rows] == [("a", "done", "", "liver; spleen")]
    organs = json.loads((tmp_path / "out" / "a" / "volumes.json").read_text())["organs"]
    assert {o["name"]: o["status"] for o in organs} == {"liver": "fail", "spleen": "fail"}
    assert len(organs[0]["offset_mm"]) == 3 and "offset_mm" not in organs[1]   # the absent spleen has no place

    page = (tmp_path / "out" / "qc.html").read_text()
    assert "1 cases: 1 with a failed organ" in page and "did not run" in page   # the cohort's check needs 20
    assert page.count("<tr><td>") == 1 and "not found in the scan" in page
    pictures = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert [alt for alt, _ in pictures] == ["liver: axial and coronal slice with its outline"]   # no spleen to show
    thumbnail = np.asarray(Image.open(io.BytesIO(base64.b64decode(pictures[0][1]))))
    assert (thumbnail == OUTLINE).all(-1).sum() > 20


class MapsElsewhere(ThresholdNet):
    """The stub network whose pixel–tag maps say background everywhere: its maps disagree with its segments."""

    def forward(self, x):
        logits, maps = super().forward(x)
        return logits, torch.cat([torch.ones_like(maps[:, :1]), torch.zeros_like(maps[:, 1:])], dim=1)


register_architecture("test-maps-elsewhere", lambda header, tensors: MapsElsewhere(
    tensors["threshold"], header["config"]["roi_size"], len(header["labels"])))


def test_the_segments_agreement_with_the_attention_maps_is_in_the_qc(files, tmp_path, capsys):
    """The maps' agreement is measured on the model grid during the run, as it is on the input grid (the stub's
    maps, pooled by 4, find its cube blurred), and a network whose maps find nothing is asked to be checked."""
    model, image = files
    result = Segmenter(model, device="cpu").segment(nib.load(image).get_fdata(), AFFINE, tags="liver")
    liver, probability = result.agreement["liver"], result.attention["liver"]
    on_input = agreement(result.labelmap == 1, probability >= 0.5, probability)
    assert liver.map_dice > 0.4 and abs(liver.map_dice - on_input.map_dice) < 0.1
    assert abs(liver.unsure_share - on_input.unsure_share) < 0.1
    assert "agreement" in result.seconds

    elsewhere = str(tmp_path / "elsewhere.mosmos")
    header = read_header(model)
    save_model(elsewhere, {"threshold": torch.tensor(0.5)}, {**header, "config": {**header["config"],
                                                                                 "arch": "test-maps-elsewhere"}})
    assert main(["segment", str(image), "--model", elsewhere, "--device", "cpu", "--tags", "liver",
                 "--output", str(tmp_path / "a.nii.gz"), "--volumes", str(tmp_path / "v.json")]) == 0
    organs = {o["name"]: o for o in json.loads((tmp_path / "v.json").read_text())["organs"]}
    reasons = organs["liver"]["reasons"]
    assert any(r.startswith("the attention maps disagree (Dice 0.00") for r in reasons), reasons
    assert any("100 % of it a probability under 0.5" in r for r in reasons), reasons
    assert "the attention maps disagree" in capsys.readouterr().out
