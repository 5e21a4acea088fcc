"""`mosmos segment` carries each organ's QC: printed beside its volume, in --volumes (.json and .csv) and in
--json-progress's "done" event. The stub network labels an 18 mL cube (about 16 mL on its grid) "liver" and finds no spleen: a liver far
below the adult range fails, the absent spleen fails as not found."""

from __future__ import annotations

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest
from inference_stub import write_stub_model

from mosmos.cli import main

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
