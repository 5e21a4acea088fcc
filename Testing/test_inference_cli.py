"""`mosmos segment` and Segmenter behaviour: tag selection, open-set notices, unknown names, cancel,
bad inputs, volumes files and JSON progress.

The network is the deterministic stub of inference_stub.py: these tests are about the engine's
I/O, tag handling and cancellation, not about the model.
"""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import inference_stub
from inference_stub import write_stub_model
from mosmos.cli import main
from mosmos.errors import MosmosError
from mosmos.inference import Cancelled, Segmenter

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _cube_volume():
    vol = np.full((48, 40, 24), -1000, np.int16)
    vol[10:30, 8:28, 5:15] = 1075  # 30 x 30 x 20 mm = 18 mL; on the 3 mm model grid one slice is a tie
    return vol


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    model = write_stub_model(root / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3))
    image = root / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_cube_volume(), AFFINE), image)
    return root, model, image


def _run(capsys, *argv):
    code = main(["segment", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _listing(folder):
    return sorted(p.name for p in Path(folder).rglob("*"))


def test_tags_select_labels_and_volumes_json(files, tmp_path, capsys):
    _, model, image = files
    out = tmp_path / "seg.nii.gz"
    code, stdout, err = _run(capsys, image, "--model", model, "--tags", "Livers", "--output", out,
                             "--volumes", tmp_path / "v.json", "--attention", tmp_path / "att", "--device", "cpu")
    assert code == 0, err
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
    labels = np.asarray(img.dataobj)
    assert set(np.unique(labels)) == {0, 1}
    report = json.loads((tmp_path / "v.json").read_text())
    assert [o["name"] for o in report["organs"]] == ["liver"]
    assert report["organs"][0]["label"] == 1 and report["organs"][0]["volume_ml"] == pytest.approx(18.0, rel=0.15)
    assert report["organs"][0]["color"] == [40, 140, 40]
    assert report["attention"] == {"liver": "liver.nii.gz"}
    att = nib.load(tmp_path / "att" / "liver.nii.gz")
    assert att.shape == labels.shape and att.get_fdata().max() <= 1.0
    assert "liver: 1" in stdout


def test_all_labelled_organs_when_no_tags_csv_volumes(files, tmp_path, capsys):
    _, model, image = files
    code, _, err = _run(capsys, image, "--model", model, "--output", tmp_path / "seg.nrrd",
                        "--volumes", tmp_path / "v.csv", "--device", "cpu")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "v.csv").open()))
    assert [r["name"] for r in rows] == ["liver", "spleen"]
    assert float(rows[0]["volume_ml"]) == pytest.approx(18.0, rel=0.15) and float(rows[1]["volume_ml"]) == 0
    assert "spleen: not found" in err


def test_open_set_tags_get_attention_and_a_notice(files, tmp_path, capsys):
    root, model, image = files
    code, _, err = _run(capsys, image, "--model", model, "--tags", "liver, duodenum, LV", "--output",
                        tmp_path / "s.nii.gz", "--attention", tmp_path / "att", "--volumes", tmp_path / "v.json")
    assert code == 0, err
    assert "no label available for duodenum (the model was not fine-tuned on it)" in err
    assert "no label available for left ventricle" in err
    report = json.loads((tmp_path / "v.json").read_text())
    assert [o["name"] for o in report["organs"]] == ["liver"]
    assert set(report["attention"]) == {"liver", "duodenum", "left ventricle"}
    assert (tmp_path / "att" / "left_ventricle.nii.gz").exists()
    assert len(report["notices"]) == 2


def test_unknown_name_is_an_error_with_suggestions(files, tmp_path, capsys):
    _, model, image = files
    code, _, err = _run(capsys, image, "--model", model, "--tags", "liver, xqzzyplop", "--output",
                        tmp_path / "s.nii.gz")
    assert code == 1 and err.count("\n") == 1
    assert "unknown organ name 'xqzzyplop'; closest known names:" in err
    assert _listing(tmp_path) == []
    seg = Segmenter(model, device="cpu")
    with pytest.raises(MosmosError, match="closest known names"):
        seg.segment(_cube_volume(), AFFINE, tags=["xqzzyplop"])


def test_a_typo_of_a_labelled_organ_asks_did_you_mean(files, tmp_path, capsys):
    _, model, image = files
    code, _, err = _run(capsys, image, "--model", model, "--tags", "livr, spleen", "--output", tmp_path / "s.nii.gz")
    assert code == 1 and err.count("\n") == 1
    assert "unknown organ name 'livr'; did you mean 'liver'?" in err
    assert _listing(tmp_path) == []


def test_cancel_stops_within_one_window_batch(files):
    _, model, _ = files
    seg = Segmenter(model, device="cpu")
    calls = []

    def progress(done, total):
        calls.append((done, total))
        return done < 2

    seg.network.calls = 0
    with pytest.raises(Cancelled):
        # one window a batch: the cube's 24 x 20 x 16 model grid holds 4 windows of 16
        seg.segment(_cube_volume(), AFFINE, tags="liver", progress=progress, sw_batch_size=1)
    assert calls[-1][0] == 2 and calls[0] == (0, calls[0][1]) and calls[0][1] > 2
    assert seg.network.calls == 2  # batches done before the cancel, none after


def test_interrupted_cli_leaves_no_files(files, tmp_path, capsys, monkeypatch):
    _, model, image = files

    def boom(self, x):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference_stub.ThresholdNet, "forward", boom)
    code, _, _ = _run(capsys, image, "--model", model, "--output", tmp_path / "out" / "s.nii.gz",
                      "--volumes", tmp_path / "out" / "v.json", "--attention", tmp_path / "out" / "att")
    assert code == 130
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_json_progress_lines_with_the_seconds_of_each_stage(files, tmp_path, capsys):
    _, model, image = files
    code, stdout, _ = _run(capsys, image, "--model", model, "--tags", "liver", "--output", tmp_path / "s.nii.gz",
                           "--attention", tmp_path / "att", "--json-progress")
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert progress[0]["done"] == 0 and progress[-1]["done"] == progress[-1]["total"] > 0
    assert [e["done"] for e in progress] == list(range(len(progress)))
    assert events[-1]["event"] == "done" and events[-1]["organs"][0]["name"] == "liver"
    stages = [e for e in events if e["event"] == "stage"]
    assert [e["stage"] for e in stages] == ["read", "load model", "resample", "windows", "stitch", "qc", "map back",
                                            "write"]
    assert all(e["seconds"] >= 0 for e in stages) and sum(e["seconds"] for e in stages) > 0
    assert events.index(stages[2]) > events.index(progress[-1])  # the segmenter's stages: once it has finished


def test_attention_maps_are_stored_as_scaled_16_bit_integers(files, tmp_path):
    """Probabilities in [0, 1] go into .nii.gz as uint16 steps of 1/65535 (half the bytes of float32 to
    compress), as close to the values Segmenter gives as their own float16 rounding; raw scores stay float32."""
    _, model, image = files
    volume = nib.load(image)
    expected = Segmenter(model, device="cpu").segment(np.asarray(volume.dataobj), volume.affine,
                                                      tags="liver").attention["liver"]
    assert main(["segment", str(image), "--model", str(model), "--tags", "liver", "--output",
                 str(tmp_path / "s.nii.gz"), "--attention", str(tmp_path / "att")]) == 0
    stored = nib.load(tmp_path / "att" / "liver.nii.gz")
    assert stored.get_data_dtype() == np.uint16 and stored.dataobj.slope == pytest.approx(1 / 65535, rel=1e-6)
    assert stored.dataobj.inter == 0 and stored.header.get_intent()[0] == "none" and expected.max() > 0.5
    np.testing.assert_allclose(np.asarray(stored.dataobj), expected, atol=2 ** -12 + 1e-5)
    assert main(["segment", str(image), "--model", str(model), "--tags", "liver", "--output",
                 str(tmp_path / "r.nii.gz"), "--attention", str(tmp_path / "raw"), "--attention-raw"]) == 0
    assert nib.load(tmp_path / "raw" / "liver.nii.gz").get_data_dtype() == np.float32
    # an uncompressed label map asked for: the maps are uncompressed too
    assert main(["segment", str(image), "--model", str(model), "--tags", "liver", "--output",
                 str(tmp_path / "u.nii"), "--attention", str(tmp_path / "plain")]) == 0
    plain = tmp_path / "plain" / "liver.nii"
    assert plain.read_bytes()[344:348] == b"n+1\0"   # the NIfTI magic where gzip's header would be
    np.testing.assert_array_equal(np.asarray(nib.load(plain).dataobj), np.asarray(stored.dataobj))


def _bad_inputs(root, image):
    cases = {}
    good = image.read_bytes()
    (root / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    cases["truncated.nii.gz"] = "cannot read"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), AFFINE), root / "4d.nii.gz")
    cases["4d.nii.gz"] = "expected a 3D volume"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(8, 8, 1), AFFINE), root / "slice.nii.gz")
    cases["slice.nii.gz"] = "single 2D slice"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), AFFINE), root / "nan.nii.gz")
    cases["nan.nii.gz"] = "every voxel is NaN"
    (root / "notes.txt").write_text("hello")
    cases["notes.txt"] = "unknown file type"
    return cases


def test_bad_inputs_give_one_line_errors_and_no_files(files, tmp_path, capsys):
    root, model, image = files
    for name, message in _bad_inputs(tmp_path, image).items():
        out = tmp_path / "out" / "s.nii.gz"
        code, _, err = _run(capsys, tmp_path / name, "--model", model, "--output", out)
        assert code == 1, name
        assert err.startswith(f"mosmos segment: error: {tmp_path / name}") and message in err, err
        assert err.count("\n") == 1
        assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = _run(capsys, image, "--model", model, "--output", blocker / "s.nii.gz")
    assert code == 1 and str(blocker / "s.nii.gz") in err
    code, _, err = _run(capsys, image, "--model", image, "--output", tmp_path / "o.nii.gz")
    assert code == 1 and "not a MOSMOS model file" in err


def test_model_for_another_modality_warns_and_continues(tmp_path, capsys):
    model = write_stub_model(tmp_path / "ct.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3))
    mr = tmp_path / "mr.nii.gz"
    vol = np.full((40, 40, 20), 10, np.int16)
    vol[10:20, 10:20, 5:10] = 900
    nib.save(nib.Nifti1Image(vol, AFFINE), mr)
    code, _, err = _run(capsys, mr, "--model", model, "--output", tmp_path / "s.nii.gz")
    assert code == 0 and "warning:" in err and "CT model" in err
    seg = Segmenter(model, device="cpu")
    res = seg.segment(vol, AFFINE, tags="liver", modality="MR")
    assert any("trained on CT" in n for n in res.notices)
