"""`mosmos segment --inputs ... --out ...`: one model load for many cases, one folder per case written whole, resume
after a SIGKILL at a random moment identical to an uninterrupted run, a bad case logged and passed, two runs on one
output folder and two torchrun ranks each doing every case once. The network is the stub of inference_stub.py
(these tests are about the cohort runner), run in processes of its own through stub_mosmos.py."""

import csv
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import real_data
from inference_stub import write_stub_model
from mosmos.cli import main
from mosmos.inference.io import read_volume

STUB_CLI = Path(__file__).resolve().parent / "stub_mosmos.py"
CASES = [f"case{n}" for n in range(6)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six CT-like volumes of different sizes with a bright box each, the stub model, and an uninterrupted run."""
    root = tmp_path_factory.mktemp("cohort")
    inputs = root / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(27)
    for n, name in enumerate(CASES):
        vol = np.full((40 + 4 * n, 36, 20 + 2 * n), -1000, np.int16)
        x, y, z = rng.integers(2, 12, 3)
        vol[x:x + 20, y:y + 16, z:z + 8] = 200 + 40 * n
        nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 2.0, 1.0])), inputs / f"{name}.nii.gz")
    model = write_stub_model(root / "stub.mosmos", roi=(16, 16, 16), spacing=(3, 3, 3))   # a few windows a case
    reference = root / "reference"
    done = subprocess.run(_cmd(inputs, model, reference), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root, inputs, model, reference


def _cmd(inputs, model, out, *more):
    return [sys.executable, str(STUB_CLI), "segment", "--inputs", str(inputs), "--model", model, "--out", str(out),
            "--tags", "liver, spleen", "--attention", "maps", "--device", "cpu", *more]


def _log(out):
    with open(out / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "cases.csv"}


def test_uninterrupted_run_writes_one_folder_per_case_and_a_log(cohort):
    _, _, _, reference = cohort
    assert sorted(p.name for p in reference.iterdir()) == sorted(CASES + ["cases.csv", "qc.html"])
    for name in CASES:
        assert sorted(p.name for p in (reference / name).rglob("*")) == [
            "labels.nii.gz", "liver.nii.gz", "maps", "spleen.nii.gz", "volumes.json"]
    log = _log(reference)
    assert [r["case"] for r in log] == CASES and {r["status"] for r in log} == {"done"}
    assert all(float(r["seconds"]) > 0 and r["error"] == "" for r in log)


def test_killed_run_resumes_to_the_same_outputs(cohort, tmp_path):
    _, inputs, model, reference = cohort
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(inputs, model, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    rng = random.Random()
    target = rng.randint(1, 3)          # SIGKILL after 1..3 finished cases, within the next case: a random moment
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "cases.csv").exists() and len(log := _log(out)) >= target:
            time.sleep(rng.uniform(0, float(log[-1]["seconds"])))
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert 1 <= len(finished) < len(CASES), finished   # killed mid-run
    logged = len(_log(out))   # a kill between a case's rename and its log line leaves it finished but unlogged
    resumed = subprocess.run(_cmd(inputs, model, out), capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} already done" in resumed.stderr
    redone = [r["case"] for r in _log(out)[logged:]]
    assert sorted(redone) == sorted(set(CASES) - set(finished))   # only the unfinished cases ran again
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]      # no staging folder or lock left
    mine, theirs = _files(out), _files(reference)
    assert mine.keys() == theirs.keys()
    for path in mine:
        if path.name.endswith((".json", ".html")):   # the QC report too: made from the finished cases alone
            assert mine[path] == theirs[path], path
        else:   # gzip stamps its own write time into the header: compare the voxels and the header
            a, b = nib.load(out / path), nib.load(reference / path)
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            np.testing.assert_array_equal(a.affine, b.affine)


def test_two_runs_on_one_folder_do_each_case_once(cohort, tmp_path):
    _, inputs, model, reference = cohort
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen(_cmd(inputs, model, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env) for _ in range(2)]
    assert [r.wait(timeout=300) for r in runs] == [0, 0], [r.stderr.read() for r in runs]
    log = _log(out)
    assert sorted(r["case"] for r in log) == CASES and {r["status"] for r in log} == {"done"}
    assert _files(out).keys() == _files(reference).keys()


def test_two_torchrun_ranks_share_the_cases(cohort, tmp_path):
    _, inputs, model, reference = cohort
    out = tmp_path / "out"
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(STUB_CLI), *_cmd(
        inputs, model, out)[2:]], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    log = _log(out)
    assert sorted(r["case"] for r in log) == CASES                      # each case once
    assert {r["case"]: r["rank"] for r in log} == {name: str(n % 2) for n, name in enumerate(CASES)}
    assert _files(out).keys() == _files(reference).keys()


def test_slurm_array_shard(cohort, tmp_path, monkeypatch, capsys):
    import inference_stub  # noqa: F401  the stub network, in this process

    _, inputs, model, _ = cohort
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert main(_cmd(inputs, model, tmp_path)[2:]) == 0
    assert sorted(r["case"] for r in _log(tmp_path)) == ["case2", "case5"]          # task 5-3 = 2 of 3


def test_a_bad_case_is_logged_and_the_rest_go_on(cohort, tmp_path, capsys):
    import inference_stub  # noqa: F401

    _, inputs, model, _ = cohort
    mixed = tmp_path / "in"
    shutil.copytree(inputs, mixed)
    (mixed / "broken.nii.gz").write_bytes(b"not a volume")
    out = tmp_path / "out"
    assert main(_cmd(mixed, model, out)[2:]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"mosmos segment: error: 1 case failed (see {out / 'cases.csv'})"
    log = {r["case"]: r for r in _log(out)}
    assert log["broken"]["status"] == "failed" and "broken.nii.gz: cannot read" in log["broken"]["error"]
    assert all(log[name]["status"] == "done" for name in CASES)
    assert not (out / "broken").exists()


def test_manifest_of_paths_and_its_missing_files(cohort, tmp_path, capsys):
    import inference_stub  # noqa: F401

    _, inputs, model, reference = cohort
    manifest = tmp_path / "cases.csv"
    manifest.write_text("case,path\nfirst," + str(inputs / "case0.nii.gz") + "\nsecond,missing.nii.gz\n")
    assert main(_cmd(manifest, model, tmp_path / "out")[2:]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"mosmos segment: error: {manifest}: 1 missing file (line 3: missing.nii.gz)"
    assert not (tmp_path / "out").exists()
    ct3 = real_data("dcmqi_ct3slice/ct-3slice")     # a DICOM series folder is a case too
    manifest.write_text(f"case,path\nfirst,{inputs / 'case0.nii.gz'}\nct,{ct3}\n")
    assert main(_cmd(manifest, model, tmp_path / "out")[2:]) == 0
    assert (tmp_path / "out" / "first" / "volumes.json").read_bytes() == \
        (reference / "case0" / "volumes.json").read_bytes()
    labels = nib.load(tmp_path / "out" / "ct" / "labels.nii.gz")
    assert labels.shape == read_volume(ct3).array.shape


def _manifest(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("case", "path"), *rows])
    return path


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_case_names_that_are_not_one_folder_in_out_are_refused_before_any_work(cohort, tmp_path, monkeypatch, capsys):
    import inference_stub  # noqa: F401

    _, inputs, model, _ = cohort
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)           # --out relative, as typed: "../x" would land in tmp_path
    escaped = Path(f"/escaped_abs_{os.getpid()}_{tmp_path.name}")    # this machine runs the tests as root
    volume = str(inputs / "case0.nii.gz")
    bad = ["/.." + str(escaped), "..", "../x", "cases.csv", "CASES.CSV", ".", "a/b", "a\\b", ".hidden", "x\0y",
           "two\nlines", "n" * 250]
    manifest = _manifest(work / "manifest.csv", [])
    before = _tree(tmp_path)
    try:
        for name in bad:
            _manifest(manifest, [("good", volume), (name, volume)])
            assert main(_cmd(manifest, model, "out")[2:]) == 1, name
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"mosmos segment: error: {manifest} line 3: the case name {name!r} ") and \
                "one plain folder name" in err and "\n" not in err, err
            assert not escaped.exists() and _tree(tmp_path) == before, name     # not even --out was made
        _manifest(manifest, [("", str(inputs / ".."))])  # a name taken from a path
        assert main(_cmd(manifest, model, "out")[2:]) == 1
        assert "line 2: the case name '..'" in capsys.readouterr().err
        named = tmp_path / "named"     # a folder of inputs: the names come from its files
        named.mkdir()
        shutil.copy(volume, named / "cases.csv.nii.gz")
        assert main(_cmd(named, model, "out")[2:]) == 1
        assert "cases.csv.nii.gz: the case name 'cases.csv' is the name of the cohort's log" in capsys.readouterr().err
        assert not (work / "out").exists()
    finally:
        if escaped.exists():
            shutil.rmtree(escaped)


def test_a_case_clears_only_its_own_staging_folder(cohort, tmp_path, capsys):
    """Cases in flight in another shard (their locks held by a live process, their staging folders half-written)
    beside cases whose names a pattern would match to theirs: ``p`` and ``p.x``, dotted study UIDs, ``*``. The
    run leaves the others' staging alone, clears its own leftover, and once the other shard is gone (killed)
    takes its cases over."""
    import inference_stub  # noqa: F401
    from mosmos.inference import cohort as runner

    _, inputs, model, reference = cohort
    volume = str(inputs / "case0.nii.gz")
    names = ["p", "p.x", "1.2.3", "1.2.3.4", "*", "a", "a.b"]
    manifest = _manifest(tmp_path / "manifest.csv", [(name, volume) for name in names])
    out = tmp_path / "out"
    out.mkdir()
    in_flight = ["p.x", "1.2.3.4", "a.b"]
    other_shard = subprocess.Popen(["sleep", "300"])
    try:
        for name in in_flight:
            (out / f".{name}.lock").write_text(f"{socket.gethostname()} {other_shard.pid}")
            runner.staging_folder(out, name).mkdir()
            (runner.staging_folder(out, name) / "labels.nii.gz").write_text("half-written")
        leftover = runner.staging_folder(out, "p")          # a killed run's, of a case this run does
        leftover.mkdir()
        (leftover / "labels.nii.gz").write_text("a killed run's")
        assert main(_cmd(manifest, model, out)[2:]) == 0
        log = {r["case"]: r["status"] for r in _log(out)}
        assert log == {"p": "done", "1.2.3": "done", "*": "done", "a": "done"}     # the others: claimed, skipped
        for name in in_flight:
            assert (runner.staging_folder(out, name) / "labels.nii.gz").read_text() == "half-written", name
        assert not leftover.exists()
        assert (out / "p" / "volumes.json").read_bytes() == (reference / "case0" / "volumes.json").read_bytes()
    finally:
        other_shard.kill()
        other_shard.wait()
    assert main(_cmd(manifest, model, out)[2:]) == 0           # its process gone, the other shard's cases are redone
    assert sorted(r["case"] for r in _log(out)) == sorted(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["cases.csv", "qc.html"])  # no lock, no staging
    capsys.readouterr()
