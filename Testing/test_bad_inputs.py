"""What a user may type wrong, over every command, the batch script and the training folder checks.

For each bad input: exit code 1 (or the Lib's report for Lib calls), exactly one line on stderr and no
traceback, nothing left behind and every input unchanged (the work folder's checksums before and after).
The commands run in-process through ``mosmos.cli.main`` (an escaping exception fails the test, as a
traceback would fail the user); a few run as real processes to check the exit code the shell sees.
Segmentation uses the deterministic stub network of inference_stub.py: these tests are about the checks
around the model, not the model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from helpers import mosmos_cmd, real_data
from inference_stub import write_stub_model
from mosmos.cli import main
from mosmos.data.phantoms import write_decathlon_dataset, write_roco_folder

ROOT = Path(__file__).resolve().parents[1]
BATCH = ROOT / "Resources" / "Scripts" / "MOSMOSSegmentBatch.py"
CT = real_data("totalseg_example/example_ct_sm.nii.gz")
AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def cube(dtype=np.int16) -> np.ndarray:
    vol = np.full((48, 40, 24), -1000, dtype)
    vol[10:30, 8:28, 5:15] = 1075
    return vol


def save(path: Path, array, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    """The inputs every case may use, in one folder whose checksums each case compares."""
    root = tmp_path_factory.mktemp("bad_inputs")
    ns = SimpleNamespace(root=root, ct=root / "ct.nii.gz", small=root / "small.nii.gz")
    shutil.copy(CT, ns.ct)
    save(ns.small, cube())
    ns.stub = write_stub_model(root / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3))
    ns.notmodel = root / "notmodel.mosmos"
    ns.notmodel.write_text("not a model\n")
    ns.foreign = save(root / "foreign.nii.gz", cube())  # someone else's volume where an output would go
    ns.corrupt = root / "corrupt.nii.gz"
    ns.corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    ns.dicom = root / "dicom"
    shutil.copytree(real_data("dcmqi_ct3slice/ct-3slice"), ns.dicom)
    ns.foreign_dcm = root / "foreign.dcm"
    ns.foreign_dcm.write_text("a report saved with the wrong extension\n")
    ns.notes = root / "notes.txt"
    ns.notes.write_text("a text file\n")
    ns.nan = save(root / "nan.nii.gz", np.full((20, 20, 20), np.nan, np.float32))
    ns.slice = save(root / "slice.nii.gz", cube()[:, :, :1])
    ns.vol4d = save(root / "vol4d.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    ns.huge = save(root / "huge.nii.gz", cube()[:20, :20, :20], np.diag([1000.0, 1000.0, 1000.0, 1.0]))
    ns.dataset_json = write_decathlon_dataset(root / "dataset", 2, 1, shape=(24, 24, 16))
    ns.dataset = ns.dataset_json.parent
    ns.roco = root / "roco"
    write_roco_folder(ns.roco, 8, image_size=32)
    ns.captions = next(ns.roco.rglob("captions.txt"))
    ns.run_foreign = root / "run_foreign"
    ns.run_foreign.mkdir()
    (ns.run_foreign / "model.safetensors").write_text("my notes, not a model\n")
    ns.eval_foreign = root / "eval_foreign"
    ns.eval_foreign.mkdir()
    (ns.eval_foreign / "metrics.csv").write_text("patient,weight\n1,70\n")
    ns.notmetrics = root / "notmetrics.csv"
    ns.notmetrics.write_text("patient,weight\n1,70\n")
    return ns


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (files) or "folder": anything created, removed or changed shows."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def refused(w, capfd, argv: list, expect: str) -> str:
    """Run ``mosmos *argv`` in-process and check the four promises; returns the error line."""
    capfd.readouterr()
    before = snapshot(w.root)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # usage errors leave through argparse's exit
        code = e.code
    err = capfd.readouterr().err
    assert code == 1, err
    line = one_line(err)
    assert line.startswith(f"mosmos {argv[0]}: error: ") and expect in line, line
    assert snapshot(w.root) == before, "a refused run changed the folder"
    return line


# (id, argv with {names} of the fixture's paths, what the error line must say)
CLI_CASES = [
    ("segment-output-is-input", "segment {ct} --model {stub} --output {ct}", "is an input of this run"),
    ("segment-output-resolves-to-input", "segment {ct} --model {stub} --output {root}/dataset/../ct.nii.gz",
     "is an input of this run"),
    ("segment-output-is-someone-elses-file", "segment {small} --model {stub} --output {foreign}",
     "is not mosmos output (label map)"),
    ("segment-volumes-is-someone-elses-json", "segment {small} --model {stub} --output {root}/x.nii.gz "
     "--volumes {dataset_json}", "is not mosmos output (organ volumes)"),
    ("segment-output-is-a-folder", "segment {small} --model {stub} --output {dataset}",
     "DICOM SEG output needs a DICOM series"),
    ("segment-seg-onto-someone-elses-dcm", "segment {dicom} --model {stub} --output {foreign_dcm}",
     "is not mosmos output (label map)"),
    ("segment-series-for-nifti", "segment {small} --model {stub} --output {root}/x.nii.gz --series 1.2.3",
     "--series applies to a DICOM folder only"),
    ("segment-output-under-a-file", "segment {small} --model {stub} --output {notes}/seg.nii.gz",
     "is a file, not a folder"),
    ("segment-output-type", "segment {small} --model {stub} --output {root}/seg.png", "output must end with"),
    ("segment-volumes-type", "segment {small} --model {stub} --output {root}/x.nii.gz --volumes {root}/v.txt",
     "--volumes must end with"),
    ("segment-attention-is-a-file", "segment {small} --model {stub} --output {root}/x.nii.gz --attention {notes}",
     "is a file, not a folder"),
    ("segment-overlap-one", "segment {small} --model {stub} --output {root}/x.nii.gz --overlap 1", "--overlap"),
    ("segment-overlap-negative", "segment {small} --model {stub} --output {root}/x.nii.gz --overlap -0.5",
     "--overlap"),
    ("segment-overlap-nan", "segment {small} --model {stub} --output {root}/x.nii.gz --overlap nan", "--overlap"),
    ("segment-overlap-word", "segment {small} --model {stub} --output {root}/x.nii.gz --overlap half",
     "invalid float value"),
    ("segment-no-output", "segment {small} --model {stub}", "required"),
    ("segment-missing-input", "segment {root}/absent.nii.gz --model {stub} --output {root}/x.nii.gz",
     "no such file"),
    ("segment-text-input", "segment {notes} --model {stub} --output {root}/x.nii.gz", "unknown file type"),
    ("segment-corrupt-input", "segment {corrupt} --model {stub} --output {root}/x.nii.gz", "cannot read"),
    ("segment-4d-input", "segment {vol4d} --model {stub} --output {root}/x.nii.gz", "expected a 3D volume"),
    ("segment-not-a-model", "segment {small} --model {notmodel} --output {root}/x.nii.gz", "notmodel.mosmos"),
    ("segment-missing-model", "segment {small} --model {root}/absent.mosmos --output {root}/x.nii.gz",
     "absent.mosmos"),
    ("segment-unknown-device", "segment {small} --model {stub} --output {root}/x.nii.gz --device quantum",
     "device"),
    ("segment-single-slice", "segment {slice} --model {stub} --output {root}/x.nii.gz", "single 2D slice"),
    ("segment-all-nan", "segment {nan} --model {stub} --output {root}/x.nii.gz", "every voxel is NaN or infinite"),
    ("segment-huge-grid", "segment {huge} --model {stub} --output {root}/x.nii.gz", "would become"),
    ("segment-empty-tags", "segment {small} --model {stub} --output {root}/x.nii.gz --tags ,", "no organ names"),
    ("finetune-lr-negative", "finetune --data {dataset} --out {root}/run --lr -1", "--lr: must be > 0"),
    ("finetune-lr-zero", "finetune --data {dataset} --out {root}/run --lr 0", "--lr: must be > 0"),
    ("finetune-lr-inf", "finetune --data {dataset} --out {root}/run --lr inf", "--lr: must be a finite number"),
    ("finetune-epochs-zero", "finetune --data {dataset} --out {root}/run --epochs 0", "--epochs: must be >= 1"),
    ("finetune-max-steps-zero", "finetune --data {dataset} --out {root}/run --max-steps 0", "--max-steps"),
    ("finetune-batch-size-zero", "finetune --data {dataset} --out {root}/run --batch-size 0", "--batch-size"),
    ("finetune-batch-size-fraction", "finetune --data {dataset} --out {root}/run --batch-size 1.5",
     "invalid int value"),
    ("finetune-num-samples-zero", "finetune --data {dataset} --out {root}/run --num-samples 0", "--num-samples"),
    ("finetune-warmup-negative", "finetune --data {dataset} --out {root}/run --warmup-steps -5", "--warmup-steps"),
    ("finetune-label-ratio-zero", "finetune --data {dataset} --out {root}/run --label-ratio 0", "--label-ratio"),
    ("finetune-label-ratio-above-one", "finetune --data {dataset} --out {root}/run --label-ratio 1.5",
     "--label-ratio"),
    ("finetune-lambda-nan", "finetune --data {dataset} --out {root}/run --lambda-pta nan", "--lambda-pta"),
    ("finetune-spacing-zero", "finetune --data {dataset} --out {root}/run --spacing 1.5 0 2", "--spacing"),
    ("finetune-spacing-two-values", "finetune --data {dataset} --out {root}/run --spacing 1.5 2",
     "expected 3 arguments"),
    ("finetune-roi-zero", "finetune --data {dataset} --out {root}/run --roi-size 0 96 96", "--roi-size"),
    ("finetune-roi-2d-for-unetr", "finetune --data {dataset} --out {root}/run --roi-size 96 96", "needs 3 values"),
    ("finetune-seed-negative", "finetune --data {dataset} --out {root}/run --seed -1", "--seed"),
    ("finetune-checkpoint-every-zero", "finetune --data {dataset} --out {root}/run --checkpoint-every 0",
     "--checkpoint-every"),
    ("finetune-out-is-the-data", "finetune --data {dataset} --out {dataset} --init random --backbone tiny-vit",
     "is an input of this run"),
    ("finetune-out-is-a-file", "finetune --data {dataset} --out {dataset_json} --init random --backbone tiny-vit",
     "is a file, not a folder"),
    ("finetune-foreign-model-in-out", "finetune --data {dataset} --out {run_foreign} --init random "
     "--backbone tiny-vit", "is not mosmos output (model file)"),
    ("finetune-events-onto-the-data", "finetune --data {dataset} --out {root}/run --init random "
     "--backbone tiny-vit --events {dataset_json}", "is not mosmos output (event log)"),
    ("finetune-mosmos-init-without-model", "finetune --data {dataset} --out {root}/run --init mosmos",
     "needs --pretrained"),
    ("finetune-missing-pretrained", "finetune --data {dataset} --out {root}/run --init mosmos "
     "--pretrained {root}/absent.safetensors", "absent.safetensors"),
    ("finetune-roi-not-whole-patches", "finetune --data {dataset} --out {root}/run --init random "
     "--backbone tiny-vit --roi-size 20 20 20", "multiple of the patch size"),
    ("pretrain-missing-weights", "pretrain --roco {roco} --out {root}/pre --backbone tiny-vit "
     "--weights {root}/absent.pt", "absent.pt"),
    ("finetune-missing-data", "finetune --data {root}/absent --out {root}/run --init random", "does not exist"),
    ("pretrain-lr-negative", "pretrain --roco {roco} --out {root}/pre --lr=-1e-5", "--lr: must be > 0"),
    # argparse takes "-1e-5" for an option: still one clean line, naming the option
    ("pretrain-lr-negative-exponent", "pretrain --roco {roco} --out {root}/pre --lr -1e-5", "argument --lr"),
    ("pretrain-epochs-zero", "pretrain --roco {roco} --out {root}/pre --epochs 0", "--epochs"),
    ("pretrain-batch-size-negative", "pretrain --roco {roco} --out {root}/pre --batch-size -4", "--batch-size"),
    ("pretrain-val-fraction-one", "pretrain --roco {roco} --out {root}/pre --val-fraction 1", "--val-fraction"),
    ("pretrain-log-every-zero", "pretrain --roco {roco} --out {root}/pre --log-every 0", "--log-every"),
    ("pretrain-workers-negative", "pretrain --roco {roco} --out {root}/pre --workers -1", "--workers"),
    ("pretrain-out-is-the-roco", "pretrain --roco {roco} --out {roco} --backbone tiny-vit",
     "is an input of this run"),
    ("pretrain-events-onto-the-captions", "pretrain --roco {roco} --out {root}/pre --backbone tiny-vit "
     "--events {captions}", "is not mosmos output (event log)"),
    ("evaluate-overlap", "evaluate --model {stub} --data {dataset} --out {root}/ev --overlap 2", "--overlap"),
    ("evaluate-no-model", "evaluate --data {dataset}", "--model and --data are required"),
    ("evaluate-out-is-a-file", "evaluate --model {stub} --data {dataset} --out {notes}", "is a file, not a folder"),
    ("evaluate-foreign-metrics", "evaluate --model {stub} --data {dataset} --out {eval_foreign}",
     "is not mosmos output (metrics table)"),
    ("evaluate-compare-missing", "evaluate --compare {root}/a.csv {root}/b.csv", "a.csv"),
    ("evaluate-compare-not-metrics", "evaluate --compare {notmetrics} {notmetrics}", "expected columns"),
    ("evaluate-bad-split", "evaluate --model {stub} --data {dataset} --split everything", "invalid choice"),
    ("tags-no-text", "tags", "required"),
    ("unknown-command", "segmentt {ct}", "invalid choice"),
]


@pytest.mark.parametrize("argv, expect", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_bad_input(w, capfd, argv, expect):
    command = argv.split()[0]
    args = [a.format(**vars(w)) for a in argv.split()]
    if command in ("segmentt",):  # the top-level parser names itself "mosmos"
        capfd.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 1
        assert expect in one_line(capfd.readouterr().err)
        return
    refused(w, capfd, args, expect)


def test_output_that_is_the_input_is_refused_by_the_real_command(w):
    """The issue's first row, as a shell runs it: the CT must survive ``--output`` = input."""
    before = snapshot(w.root)
    for args in (["segment", w.ct, "--model", w.stub, "--output", w.ct],
                 ["finetune", "--data", w.dataset, "--out", w.root / "run", "--lr", "-1"],
                 ["finetune", "--data", w.dataset, "--out", w.root / "run", "--epochs", "0"]):
        proc = subprocess.run(mosmos_cmd(*map(str, args)), capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 1, proc.stderr
        assert one_line(proc.stderr).startswith(f"mosmos {args[0]}: error: ")
    assert snapshot(w.root) == before
    # a report piped in that is not UTF-8, read where the terminal's encoding is strict
    proc = subprocess.run(mosmos_cmd("tags", "-"), input=b"\xffliver\xfe", capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8:strict"))
    assert proc.returncode == 1
    assert one_line(proc.stderr.decode()) == "mosmos tags: error: stdin: not UTF-8 text (byte 0xff at position 0)"


def test_huge_model_grid_says_how_large_and_why(w, capfd):
    line = refused(w, capfd, ["segment", w.huge, "--model", w.stub, "--output", w.root / "x.nii.gz"], "would become")
    # the input's voxel sizes and extent, the model spacing, the resulting grid and its memory
    assert "20 x 20 x 20 volume of 1000 x 1000 x 1000 mm voxels" in line
    assert "20000 x 20000 x 20000 mm across" in line and "3 x 3 x 3 mm spacing" in line
    assert "6334 x 6334 x 6334 voxels" in line and "GiB" in line


@pytest.mark.parametrize("value", [0.0, -1000.0])
def test_a_volume_of_one_value_gives_an_empty_label_map_and_one_warning(tmp_path, capfd, value):
    """Issue 18: all air, or all one value, is not an error: one line saying so, an empty label map, exit 0."""
    model = write_stub_model(tmp_path / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3))
    flat = save(tmp_path / "flat.nii.gz", np.full((20, 20, 20), value, np.float32))
    out = tmp_path / "flat_seg.nii.gz"
    capfd.readouterr()
    assert main(["segment", str(flat), "--model", str(model), "--output", str(out)]) == 0
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "Traceback" not in err, err
    assert f"every voxel has the same value ({value})" in warnings[0] and "label map is empty" in warnings[0]
    labels = np.asarray(nib.load(out).dataobj)
    assert labels.shape == (20, 20, 20) and not labels.any()


def test_long_organ_name_is_shortened(w, capfd):
    name = "x" * 10_000
    line = refused(w, capfd, ["segment", w.small, "--model", w.stub, "--output", w.root / "x.nii.gz",
                              "--tags", name], "unknown organ name")
    assert len(line) < 300 and "xxx…" in line


def test_non_finite_voxels_are_counted_warned_and_treated_like_nan(tmp_path, capfd):
    model = write_stub_model(tmp_path / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3))
    vol = cube(np.float32)
    vol[40:, 0, 0] = [np.inf, -np.inf, np.nan, np.inf, np.nan, -np.inf, np.inf, np.nan]
    bad = save(tmp_path / "bad.nii.gz", vol)
    filled = vol.copy()
    filled[~np.isfinite(vol)] = vol[np.isfinite(vol)].min()  # what NaN has always become
    save(tmp_path / "filled.nii.gz", filled)
    capfd.readouterr()
    assert main(["segment", str(bad), "--model", model, "--output", str(tmp_path / "bad_seg.nii.gz")]) == 0
    err = capfd.readouterr().err
    assert "warning: " in err and "8 of 46080 voxels are not finite (NaN or infinite)" in err
    assert main(["segment", str(tmp_path / "filled.nii.gz"), "--model", model,
                 "--output", str(tmp_path / "filled_seg.nii.gz")]) == 0
    assert "not finite" not in capfd.readouterr().err
    got = np.asarray(nib.load(tmp_path / "bad_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(got, np.asarray(nib.load(tmp_path / "filled_seg.nii.gz").dataobj))
    assert got.max() > 0


@pytest.mark.parametrize("umask, mode", [(0o022, "-rw-r--r--"), (0o027, "-rw-r-----")])
def test_outputs_take_their_mode_from_the_umask(tmp_path, capfd, umask, mode):
    old = os.umask(umask)
    try:
        model = Path(write_stub_model(tmp_path / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3)))
        image = save(tmp_path / "ct.nii.gz", cube())
        out = tmp_path / "out"
        args = ["segment", str(image), "--model", str(model), "--output", str(out / "seg.nrrd"),
                "--attention", str(out / "att"), "--volumes", str(out / "volumes.csv")]
        assert main(args) == 0
        written = [model, out / "seg.nrrd", out / "volumes.csv", *sorted((out / "att").iterdir())]
        assert len(written) == 5
        assert {stat.filemode(p.stat().st_mode) for p in written} == {mode}
        # a previous output of the same kind may be replaced (and keeps the umask's mode)
        assert main(args) == 0
        assert stat.filemode((out / "seg.nrrd").stat().st_mode) == mode
    finally:
        os.umask(old)
    capfd.readouterr()


BATCH_CASES = [
    ("output-is-the-input", ["--input", "{ct}", "--output", "{ct}"], "is an input of this run"),
    ("folder-output-onto-its-inputs", ["--input", "{root}/batch_in", "--output", "{root}/batch_in",
                                       "--format", "nii.gz"], "is an input of this run"),
    ("missing-input", ["--input", "{root}/absent.nii.gz", "--output", "{root}/y.seg.nrrd"], "no such file"),
    ("not-a-model", ["--input", "{ct}", "--model", "{notmodel}", "--output", "{root}/y.seg.nrrd"],
     "notmodel.mosmos"),
]


def test_batch_script_refuses_bad_input(w):
    """Run as test_slicer_batch.py runs it: plain Python with slicer-core, the source tree on PYTHONPATH."""
    (w.root / "batch_in").mkdir(exist_ok=True)
    shutil.copy(w.small, w.root / "batch_in" / "small.nii.gz")
    for name, template, expect in BATCH_CASES:
        before = snapshot(w.root)
        args = [a.format(**vars(w)) for a in template] + ["--model", str(w.stub)] * ("--model" not in template)
        proc = subprocess.run([sys.executable, str(BATCH), *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert proc.returncode == 1, (name, proc.stderr)
        line = one_line(proc.stderr)
        assert line.startswith("MOSMOSSegmentBatch: error: ") and expect in line, (name, line)
        assert snapshot(w.root) == before, name


def test_training_folder_checks_report_bad_folders(w):
    """MOSMOSTrainLib.folders: a bad folder is a report that is not ok, each problem one line; nothing written."""
    sys.path[:0] = [str(ROOT / "MOSMOSSegment"), str(ROOT / "MOSMOSTrain")]
    from MOSMOSTrainLib import folders

    broken = w.root / "broken_dataset"
    broken.mkdir(exist_ok=True)
    (broken / "dataset.json").write_text('{"labels": {"0": "background", ')
    before = snapshot(w.root)
    cases = [
        (folders.check_roco(w.notes), "folder not found"),
        (folders.check_roco(w.dataset), "no"),
        (folders.check_dataset(broken), "dataset.json"),
        (folders.check_dataset(w.dataset, label_ratio=0), "label ratio"),
        (folders.check_dataset(w.roco), "no dataset.json"),
        (folders.check_output(w.notes / "run", "finetune"), "cannot be written"),
    ]
    for report, expect in cases:
        assert not report.ok and report.problems, report.text
        assert all("\n" not in p and "Traceback" not in p for p in report.problems), report.problems
        assert any(expect in p for p in report.problems), report.problems
    assert snapshot(w.root) == before
