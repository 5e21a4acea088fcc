"""MOSMOSTrainLib on real MRML (slicer-core): folder checks on real and generated folders, the training command
line against the contract, a real tiny pre-training run stopped and resumed, and fine-tuning's model registered
in MOSMOSSegment's models folder."""

from __future__ import annotations

import json
import stat
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import slicer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MOSMOSTrain"))

from mosmos.mrml import models  # noqa: E402
from MOSMOSTrainLib import curves, folders, job, settings  # noqa: E402
from helpers import real_data  # noqa: E402
from mosmos.data.phantoms import write_decathlon_dataset, write_roco_folder  # noqa: E402
from mosmos.errors import MosmosError  # noqa: E402

ROCO_CAPTIONS = real_data("roco_captions_ccby")


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv(models.ENV_MODELS_DIR, str(folder))
    return folder


def column(table, name):
    return slicer.util.arrayFromTableColumn(table, name).tolist()


# ---- folder checks ------------------------------------------------------------------------------------------------

def test_roco_check_on_real_captions_without_images():
    report = folders.check_roco(ROCO_CAPTIONS)
    assert not report.ok
    split = report.summary["splits"]["validation"]
    assert split["captions"] == 3393 and split["usable"] == 0 and split["missing"] == 3393
    assert report.summary["train_pairs"] == 0
    assert any("no usable pair" in p and "images" in p for p in report.problems)
    assert "validation: 0 usable pairs of 3393 captions (3393 images missing" in report.text


def test_roco_check_on_generated_folder(tmp_path):
    root = write_roco_folder(tmp_path / "roco", 40, seed=0)
    (root / "data" / "train" / "radiology" / "images" / sorted(
        (root / "data" / "train" / "radiology" / "images").iterdir())[0].name).write_bytes(b"not an image")
    report = folders.check_roco(root, batch_size=8)
    assert report.ok, report.text
    train = report.summary["splits"]["train"]
    assert (train["captions"], train["usable"], train["unreadable"]) == (32, 31, 1)
    assert report.summary["train_pairs"] == 31 and report.summary["validation_pairs"] == 8
    assert any("1 pairs are skipped" in n for n in report.notes)
    too_big = folders.check_roco(root, batch_size=64)
    assert not too_big.ok and "fewer than one batch of 64" in too_big.text


def test_checks_of_empty_and_unselected_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for report in (folders.check_roco(empty), folders.check_dataset(empty)):
        assert not report.ok and len(report.problems) == 1 and str(empty) in report.problems[0]
    assert "the folder is empty" in folders.check_roco(empty).problems[0]
    assert "no dataset.json" in folders.check_dataset(empty).problems[0]
    assert folders.check_roco(".").problems == ["no ROCO folder selected"]
    assert folders.check_dataset(tmp_path / "nowhere").problems == [f"{tmp_path / 'nowhere'}: folder not found"]


def test_dataset_check_on_generated_dataset(tmp_path):
    write_decathlon_dataset(tmp_path / "ds", 2, 1, seed=0, shape=(32, 32, 16))
    report = folders.check_dataset(tmp_path / "ds", label_ratio=0.5)
    assert report.ok, report.text
    s = report.summary
    assert (s["training"], s["validation"], s["test"], s["training_used"]) == (2, 1, 0, 1)
    assert s["modality"] == "CT" and all(o["known"] for o in s["organs"].values())
    assert "liver" in {o["tag"] for o in s["organs"].values()}
    assert set(s["label_values_found"]) <= {0, *s["organs"]} and 0 in s["label_values_found"]
    assert "2 training (1 used with label ratio 0.5), 1 validation" in report.text
    assert "32x32x16" in report.text


def test_dataset_check_reports_errors(tmp_path):
    write_decathlon_dataset(tmp_path / "ds", 2, 1, seed=0, shape=(32, 32, 16))
    dataset_json = tmp_path / "ds" / "dataset.json"
    data = json.loads(dataset_json.read_text())

    dataset_json.write_text(json.dumps(data)[:-5])
    report = folders.check_dataset(tmp_path / "ds")
    assert not report.ok and "malformed JSON" in report.problems[0] and "dataset.json" in report.problems[0]

    missing = json.loads(json.dumps(data))
    missing["training"][1]["label"] = "labelsTr/nothing.nii.gz"
    dataset_json.write_text(json.dumps(missing))
    report = folders.check_dataset(tmp_path / "ds")
    assert not report.ok and "nothing.nii.gz does not exist" in report.problems[0]

    # Readable JSON, bad cases: every case's problem is listed, not only the first.
    extra = json.loads(json.dumps(data))
    extra["labels"]["99"] = "duodenum"
    (tmp_path / "ds" / "imagesTr" / "garbage.nii.gz").write_bytes(b"garbage")
    extra["training"].append({"image": "imagesTr/garbage.nii.gz", "label": extra["training"][0]["label"]})
    dataset_json.write_text(json.dumps(extra))
    report = folders.check_dataset(tmp_path / "ds")
    assert not report.ok and len(report.problems) == 1 and "case garbage: cannot read image" in report.problems[0]
    assert any("'duodenum'" in n and "open-set" in n for n in report.notes)
    assert any("99 (duodenum)" in n and "appear in no label map" in n for n in report.notes)

    undeclared = json.loads(json.dumps(data))
    del undeclared["labels"][max(undeclared["labels"], key=int)]
    dataset_json.write_text(json.dumps(undeclared))
    report = folders.check_dataset(tmp_path / "ds")
    assert not report.ok and len(report.problems) == 3
    assert all("not defined in 'labels'" in p for p in report.problems)


def _drain(check, seconds=120):
    events, deadline = [], time.monotonic() + seconds
    while not check.done:
        assert time.monotonic() < deadline, "folder check did not end"
        events += check.poll()
        time.sleep(0.05)
    return events


def test_folder_check_in_a_background_process_reports_progress_and_the_same_reports(tmp_path):
    """What the GUI runs instead of the blocking checks: the same reports, with per-case progress."""
    write_decathlon_dataset(tmp_path / "ds", 2, 1, seed=0, shape=(16, 16, 8))
    arguments = {"output": tmp_path / "out", "dataset": tmp_path / "ds", "label_ratio": 0.5}
    check = folders.FolderCheck("finetune", **arguments).start()
    events = _drain(check)
    assert check.error is None, check.error
    assert [(e["done"], e["total"]) for e in events if e["event"] == "progress"] == [(0, 3), (1, 3), (2, 3)]
    expected = folders.check_stage("finetune", **arguments)
    assert [(r.kind, r.folder, r.ok, r.text) for r in check.reports] == \
        [(r.kind, r.folder, r.ok, r.text) for r in expected]
    assert check.reports[1].summary["training_used"] == 1

    stopped = folders.FolderCheck("pretrain", output=tmp_path / "out", roco=tmp_path / "ds").start()
    stopped.cancel(wait=False)
    _drain(stopped)
    assert stopped.error == "folder check stopped" and stopped.reports == []


def test_output_check(tmp_path):
    report = folders.check_output(tmp_path / "new" / "run", "finetune")
    assert report.ok and "no earlier run" in report.text
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.pt").write_bytes(b"x")
    report = folders.check_output(tmp_path / "old", "pretrain")
    assert report.summary == {"checkpoint": True, "model": False} and "Resume continues" in report.text
    assert folders.check_output("", "pretrain").problems == ["no output folder selected"]


# ---- command line -------------------------------------------------------------------------------------------------

def parsed(argv):
    """The configuration a `python -m mosmos pretrain|finetune ...` argv makes (the command's own parser)."""
    import argparse

    from mosmos.commands import finetune, pretrain
    from mosmos.train.config import FinetuneConfig, PretrainConfig

    command, config = (pretrain, PretrainConfig) if argv[3] == "pretrain" else (finetune, FinetuneConfig)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(argv[4:])
    return config.from_args(args), (args.resume, args.events, args.no_progress)


def test_commands_follow_the_training_contract(tmp_path):
    pre = settings.TrainingSettings("pretrain", out=tmp_path / "out", roco=tmp_path / "roco", weights="openai")
    argv = pre.command(python="py")
    assert argv[:4] == ["py", "-m", "mosmos", "pretrain"] and argv[-3:] == ["--events", "-", "--no-progress"]
    # the argv the widget wrote field by field before it took the configuration's (FromArgs.to_argv)
    by_hand = ["py", "-m", "mosmos", "pretrain", "--roco", str(tmp_path / "roco"), "--out", str(tmp_path / "out"),
               "--backbone", "ViT-B-16", "--weights", "openai", "--epochs", "50", "--batch-size", "64", "--lr",
               "1e-05", "--seed", "0", "--workers", "4", "--device", "auto", "--checkpoint-every", "500", "--events",
               "-", "--no-progress"]
    assert parsed(argv) == parsed(by_hand) and parsed(argv)[0] == pre.config()
    assert pre.command(resume=True, python="py")[-4:] == ["--resume", "--events", "-", "--no-progress"]

    model = tmp_path / "pretrained.safetensors"
    model.write_bytes(b"x")
    fine = settings.TrainingSettings("finetune", out=tmp_path / "ft", dataset=tmp_path / "ds", pretrained=model,
                                     device="GPU", max_steps=10, log_every=1, roi_size=(32, 32, 32))
    argv = fine.command(python="py")
    assert argv[:4] == ["py", "-m", "mosmos", "finetune"]
    made, _ = parsed(argv)
    assert made.data == str(tmp_path / "ds") and made.pretrained == str(model)
    assert (made.arch, made.init, made.lr, made.batch_size, made.epochs) == ("unetr", "mosmos", 1e-4, 1, 1000)
    assert (made.lambda_pta, made.label_ratio, made.device) == (0.8, 1.0, "cuda")
    assert (made.max_steps, made.log_every, made.roi_size) == (10, 1, [32, 32, 32])
    by_hand = ["py", "-m", "mosmos", "finetune", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "ft"),
               "--arch", "unetr", "--backbone", "ViT-B-16", "--init", "mosmos", "--pretrained", str(model),
               "--lambda-pta", "0.8", "--label-ratio", "1", "--roi-size", "32", "32", "32", "--epochs", "1000",
               "--batch-size", "1", "--lr", "0.0001", "--seed", "0", "--workers", "4", "--device", "cuda",
               "--checkpoint-every", "500", "--log-every", "1", "--max-steps", "10", "--events", "-", "--no-progress"]
    assert parsed(argv) == parsed(by_hand) and parsed(argv)[0] == fine.config()
    random = settings.TrainingSettings("finetune", out=tmp_path / "ft", dataset=tmp_path / "ds", init="random",
                                       pretrained=model)
    assert "--pretrained" not in random.command(python="py")

    bad = [(dict(stage="train", out=tmp_path), "stage 'train'"),
           (dict(stage="pretrain", out=tmp_path), "ROCO folder: not selected"),
           (dict(stage="pretrain", out=".", roco=tmp_path), "output folder: not selected"),
           (dict(stage="pretrain", out=tmp_path, roco=tmp_path, backbone="ViT-H"), "backbone 'ViT-H'"),
           (dict(stage="pretrain", out=tmp_path, roco=tmp_path, device="tpu"), "device 'tpu'"),
           (dict(stage="finetune", out=tmp_path, dataset=tmp_path), "pre-trained model: required"),
           (dict(stage="finetune", out=tmp_path, dataset=tmp_path, pretrained=tmp_path / "no.safetensors"),
            "no.safetensors: pre-trained model file not found"),
           (dict(stage="finetune", out=tmp_path, dataset=tmp_path, init="random", label_ratio=0.0),
            "--label-ratio: must be > 0 and <= 1, got 0.0"),
           (dict(stage="finetune", out=tmp_path, dataset=tmp_path, init="random", epochs=0), "--epochs: must be >= 1, got 0"),
           (dict(stage="pretrain", out=tmp_path, roco=tmp_path, lr=float("nan")), "--lr: must be a finite number")]
    for kwargs, message in bad:
        with pytest.raises(MosmosError, match=message.replace("(", r"\(")):
            settings.TrainingSettings(**kwargs).command()


def test_defaults_are_the_papers_and_the_cores():
    from mosmos.train import config

    assert settings.PRETRAIN_DEFAULTS == {"epochs": 50, "batch_size": 64, "lr": 1e-5}
    assert settings.FINETUNE_DEFAULTS["lr"] == 1e-4 and settings.FINETUNE_DEFAULTS["lambda_pta"] == 0.8
    for key, value in settings.PRETRAIN_DEFAULTS.items():
        assert getattr(config.PretrainConfig, key) == value, key
    for key, value in settings.FINETUNE_DEFAULTS.items():
        assert getattr(config.FinetuneConfig, key) == value, key


# ---- curves -------------------------------------------------------------------------------------------------------

def test_events_become_table_rows_and_plot_series(scene):
    c = curves.TrainingCurves("finetune", scene)
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 2
    assert c.chart.GetNumberOfPlotSeriesNodes() == 4
    names = {c.chart.GetNthPlotSeriesNode(i).GetYColumnName(): c.chart.GetNthPlotSeriesNode(i).GetTableNodeID()
             for i in range(4)}
    assert names == {"loss": c.stepTable.GetID(), "seg": c.stepTable.GetID(), "pta": c.stepTable.GetID(),
                     "val_dice": c.valTable.GetID()}
    for i in range(1, 6):
        c.add({"event": "step", "step": i, "epoch": (i - 1) // 2, "loss": 1.0 / i, "seg": 0.5 / i, "pta": 0.5 / i,
               "lr": 1e-4})
        if i % 2 == 0:
            c.add({"event": "val", "step": i, "epoch": i // 2 - 1, "val_dice": 0.1 * i,
                   "dice": {"liver": 0.2 * i, "spleen": 0.1}})
    assert column(c.stepTable, "step") == [1, 2, 3, 4, 5]
    assert column(c.valTable, "val_dice") == pytest.approx([0.2, 0.4])
    assert column(c.valTable, "dice liver") == pytest.approx([0.4, 0.8])
    c.add({"event": "start", "stage": "finetune", "resumed_step": 2})  # a resumed run redoes steps 3..
    assert column(c.stepTable, "step") == [1, 2] and column(c.valTable, "step") == [2]
    c.add({"event": "val", "step": 4, "epoch": 1, "val_dice": 0.5, "dice": {"liver": 0.6, "kidney": 0.3}})
    assert np.isnan(column(c.valTable, "dice kidney")[0]) and column(c.valTable, "dice kidney")[1] == 0.3
    assert not c.add({"event": "checkpoint", "step": 4})


def test_log_lines_and_durations():
    assert job.format_duration(42) == "42 s" and job.format_duration(125) == "2 min 05 s"
    assert job.format_duration(3 * 3600 + 60 * 7) == "3 h 07 min"
    line = job.describe({"event": "step", "step": 3, "total_steps": 9, "epoch": 0, "loss": 2.5, "irc": 2.0,
                         "mlr": 0.5, "lr": 1e-5, "eta_s": 61})
    assert line == "step 3/9 (epoch 0): loss 2.5 (irc 2, mlr 0.5), lr 1e-05, ETA 1 min 01 s"
    assert job.describe({"event": "exit", "returncode": 0}) is None
    assert "best so far" in job.describe({"event": "val", "epoch": 1, "step": 6, "val_dice": 0.7, "best": True})


# ---- real runs ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
    """A tiny real pre-training run, stopped after its first checkpoint and resumed to the end."""
    scene = slicer.vtkMRMLScene()
    base = tmp_path_factory.mktemp("pretrain")
    roco = write_roco_folder(base / "roco", 64, seed=0)
    s = settings.TrainingSettings("pretrain", out=base / "out", roco=roco, backbone="tiny-vit", epochs=2,
                                  batch_size=16, workers=0, checkpoint_every=2, log_every=1, device="cpu")
    run = job.TrainingJob(s, scene=scene, modelsFolder=base / "models", python=sys.executable)
    seen = {"first": [], "second": []}

    def stop_at_checkpoint(event):
        seen["first"].append(event)
        if event["event"] == "checkpoint":
            run.stop()

    run.start()
    assert run.wait(timeout=60, onEvent=stop_at_checkpoint) == job.STOPPED, run.statusText()
    stopped = {"step": run.step, "checkpoint": run.lastCheckpointStep, "status": run.statusText(),
               "resumable": run.canResume}
    run.resume()
    state = run.wait(timeout=60, onEvent=seen["second"].append)
    yield run, state, stopped, seen
    scene.Clear(1)


def test_pretraining_stops_and_resumes_to_the_planned_end(pretraining):
    run, state, stopped, seen = pretraining
    assert state == job.FINISHED, run.statusText()
    assert stopped["resumable"] and stopped["checkpoint"] == 2 and "Resume continues" in stopped["status"]
    first_start = next(e for e in seen["first"] if e["event"] == "start")
    second_start = next(e for e in seen["second"] if e["event"] == "start")
    assert first_start["total_steps"] == 6 and first_start["resumed_step"] == 0
    assert second_start["resumed_step"] >= 2 and second_start["total_steps"] == 6
    assert run.step == run.totalSteps == 6 and run.progress == 1.0
    # The resumed run's rows replace the stopped run's rows after its checkpoint: one row per step.
    assert column(run.curves.stepTable, "step") == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(column(run.curves.stepTable, name)).all() for name in ("loss", "irc", "mlr", "lr"))
    assert column(run.curves.valTable, "step") == [3, 6]
    assert 0.0 <= min(column(run.curves.valTable, "val_map")) <= max(column(run.curves.valTable, "val_map")) <= 1.0
    series = {run.curves.chart.GetNthPlotSeriesNode(i).GetYColumnName()
              for i in range(run.curves.chart.GetNumberOfPlotSeriesNodes())}
    assert series == {"loss", "irc", "mlr", "val_loss", "val_map"}
    assert any((job.describe(e) or "").startswith("checkpoint saved at step 2") for e in seen["first"])


def test_pretrained_model_stays_in_the_output_folder(pretraining):
    run, state, _, _ = pretraining
    from mosmos.files.modelfile import read_header

    assert run.modelPath == run.settings.out / "pretrained.safetensors"
    assert models.model_kind(read_header(run.modelPath)) == "pretrained"
    assert run.registered is None and not run.modelsFolder.exists()  # a pretrained model cannot segment
    assert "Finished" in run.statusText() and "models" not in run.statusText()


def fake_python(folder: Path, body: str) -> str:
    """An executable that stands in for the interpreter: `<it> -m mosmos ...` runs ``body`` instead."""
    path = folder / "fake-python"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_failed_run_reports_the_core_error(scene, tmp_path):
    python = fake_python(tmp_path, """\
        import sys
        print("loading...", flush=True)
        roco = sys.argv[sys.argv.index("--roco") + 1]
        print(f"mosmos pretrain: error: {roco}: ROCO folder not found", file=sys.stderr)
        sys.exit(1)
    """)
    s = settings.TrainingSettings("pretrain", out=tmp_path / "out", roco=tmp_path / "nowhere")
    run = job.TrainingJob(s, python=python).start()
    assert run.wait(timeout=30) == job.FAILED
    assert run.error == f"{tmp_path / 'nowhere'}: ROCO folder not found"
    assert run.statusText() == f"Failed: {tmp_path / 'nowhere'}: ROCO folder not found"
    with pytest.raises(MosmosError, match="no checkpoint to resume from"):
        run.resume()


FAKE_FINETUNE = """\
    import argparse, shutil, sys
    from pathlib import Path
    from mosmos.files.events import EventLog

    # The README's fine-tuning contract, strictly: an unknown or missing option exits with code 2.
    assert sys.argv[1:4] == ["-m", "mosmos", "finetune"], sys.argv
    p = argparse.ArgumentParser(prog="mosmos finetune")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", choices=["unetr", "unet2d"])
    p.add_argument("--backbone")
    p.add_argument("--init", choices=["mosmos", "clip", "random"])
    p.add_argument("--pretrained")
    for name in ("--epochs", "--batch-size", "--num-samples", "--val-every", "--max-steps", "--seed", "--workers",
                 "--checkpoint-every", "--log-every"):
        p.add_argument(name, type=int)
    for name in ("--lr", "--lambda-pta", "--label-ratio"):
        p.add_argument(name, type=float)
    p.add_argument("--roi-size", type=int, nargs=3)
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true")
    p.add_argument("--events")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(sys.argv[4:])
    assert a.events == "-" and a.no_progress and Path(a.pretrained).is_file()
    out = Path(a.out)
    log = EventLog("-")
    log.emit("start", stage="finetune", config=vars(a), world_size=1, steps_per_epoch=2, total_steps=4,
             resumed_step=0)
    for step in range(1, 5):
        log.emit("step", step=step, epoch=(step - 1) // 2, loss=2.0 / step, seg=1.0 / step, pta=1.0 / step,
                 lr=a.lr, images_per_s=1.0, eta_s=4 - step, total_steps=4)
        if step % 2 == 0:
            log.emit("val", epoch=step // 2 - 1, step=step, best=True, val_dice=0.2 * step,
                     dice={"liver": 0.3 * step, "spleen": 0.1 * step})
            log.emit("checkpoint", step=step)
    shutil.copyfile(Path(a.data).parent / "made.safetensors", out / "model.safetensors")  # no torch: starts fast
    log.emit("done", stage="finetune", step=4, model=str(out / "model.safetensors"))
"""


def test_finetuning_registers_its_model_for_mosmos_segment(scene, tmp_path, models_dir):
    """The job's side of fine-tuning, against a stand-in for `mosmos finetune` that checks the command line
    with the contract's options and answers with contract events."""
    import torch
    from mosmos.files.modelfile import save_model

    python = fake_python(tmp_path, FAKE_FINETUNE)
    save_model(tmp_path / "made.safetensors", {"w": torch.zeros(3)},
               {"kind": "mosmos-segmentation", "modality": "CT", "config": {},
                "labels": {"0": "background", "1": "spleen", "2": "liver"}})
    pretrained = tmp_path / "pretrained.safetensors"
    pretrained.write_bytes(b"x")
    write_decathlon_dataset(tmp_path / "ds", 2, 1, seed=0, shape=(32, 32, 16))
    s = settings.TrainingSettings("finetune", out=tmp_path / "abdomen-unetr", dataset=tmp_path / "ds",
                                  pretrained=pretrained, backbone="tiny-vit", epochs=2, workers=0,
                                  roi_size=(32, 32, 32), device="cpu")
    run = job.TrainingJob(s, python=python).start()
    assert run.wait(timeout=60) == job.FINISHED, run.statusText()
    assert column(run.curves.stepTable, "seg") == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert column(run.curves.valTable, "val_dice") == pytest.approx([0.4, 0.8])
    assert column(run.curves.valTable, "dice liver") == pytest.approx([0.6, 1.2])
    assert run.registered is not None and run.registered.path == models_dir / "abdomen-unetr.safetensors"
    listed = models.list_models()
    assert [m.name for m in listed] == ["abdomen-unetr.safetensors"] and listed[0].organs == ("spleen", "liver")
    assert "Added to MOSMOSSegment's models as abdomen-unetr.safetensors" in run.statusText()


def test_real_finetuning_from_the_pretrained_model(pretraining, scene, tmp_path, models_dir):
    pre, _, _, _ = pretraining
    write_decathlon_dataset(tmp_path / "ds", 2, 1, seed=0, shape=(32, 32, 16))
    s = settings.TrainingSettings("finetune", out=tmp_path / "phantom-unetr", dataset=tmp_path / "ds",
                                  pretrained=pre.modelPath, backbone="tiny-vit", epochs=1, max_steps=1, workers=0,
                                  log_every=1, roi_size=(32, 32, 32), num_samples=1, device="cpu")
    run = job.TrainingJob(s, python=sys.executable).start()
    assert run.wait(timeout=120) == job.FINISHED, run.statusText()
    assert run.step == run.totalSteps == 1 and column(run.curves.stepTable, "step") == [1]
    assert all(np.isfinite(column(run.curves.stepTable, name)).all() for name in ("loss", "seg", "pta"))
    assert len(column(run.curves.valTable, "val_dice")) == 1
    assert [m.name for m in models.list_models()] == ["phantom-unetr.safetensors"]
