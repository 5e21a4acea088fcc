"""`mosmos study --quick`: the pre-training study command end to end on its smallest setting."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from mosmos.cli import main
from mosmos.data.phantoms import BTCV_LABELS
from mosmos.errors import MosmosError
from mosmos.evaluation.metrics import wilcoxon_p
from mosmos.experiments.study import StudyPlan, study_table, summarize


def test_quick_study_writes_its_table_runs_and_plot(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--quick", "--no-progress", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| labelled volumes |" in printed and "total time:" in printed

    summary = json.loads((out / "study.json").read_text())
    [entry] = summary["table"]
    assert entry["budget"] == 1 and entry["pairs"] == 1 and entry["wilcoxon_p"] is None
    assert all(0.0 <= entry[init]["mean"] <= 1.0 for init in ("mosmos", "random"))
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["budget"], r["seed"], r["init"]) for r in rows] == [("1", "0", "mosmos"), ("1", "0", "random")]
    for init in ("mosmos", "random"):  # each run fine-tuned from its own initialisation on one labelled volume
        header = json.loads((out / "runs" / f"b1-s0-{init}" / "events.jsonl").read_text().splitlines()[0])
        assert header["event"] == "start" and header["train_cases"] == 1
    assert (out / "study.md").read_text() == study_table(summary)
    maps = summary["pretrained_maps"]  # the diagnosis of what pre-training could transfer, beside the table
    assert 0.0 <= maps["mean_auc"] <= 1.0 and 0.0 <= maps["random"]["tag_centred_auc"] <= 1.0
    assert maps["auc"] and set(maps["auc"]) <= set(BTCV_LABELS.values())
    assert "Pre-trained model's own 2D maps" in (out / "study.md").read_text()
    with Image.open(out / "study.png") as fig:
        assert fig.size[0] > 200


def test_summary_pairs_inits_by_seed_and_counts_wins():
    plan = StudyPlan.of(False, budgets=[1, 4], seeds=5)
    mosmos = [0.5, 0.6, 0.4, 0.7, 0.55]
    random_ = [0.4, 0.62, 0.3, 0.5, 0.45]
    rows = [{"budget": b, "seed": s, "init": init, "dice": d + (b == 4) * 0.2}
            for b in (1, 4) for init, values in (("mosmos", mosmos), ("random", random_))
            for s, d in enumerate(values)]
    first = summarize(rows, plan)["table"][0]
    assert first["mosmos_wins"] == 4 and first["pairs"] == 5
    assert abs(first["mosmos"]["mean"] - 0.55) < 1e-9 and abs(first["random"]["sd"] - 0.1186592) < 1e-6
    as_results = [{f"seed{s}": {"mean": {"dice": d}} for s, d in enumerate(v)} for v in (mosmos, random_)]
    assert first["wilcoxon_p"] == wilcoxon_p(*as_results)[0]


def test_a_study_of_zero_seeds_is_an_error_line(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "s"), "--seeds", "0", "--no-progress"]) == 1
    assert not (tmp_path / "s").exists()
    assert capsys.readouterr().err.startswith("mosmos study: error: study: budgets, seeds")


def test_an_unknown_report_style_is_an_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a usage error leaves through argparse
        main(["study", "--out", str(tmp_path / "s"), "--reports", "all", "--no-progress"])
    assert exit_info.value.code == 1 and "--reports: invalid choice: 'all'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    with pytest.raises(MosmosError, match="--reports all"):
        StudyPlan.of(False, reports="all")
    assert StudyPlan.of(False, reports="findings").reports == "findings"


def test_report_pictures_show_the_body_at_the_scale_of_a_finetuning_window():
    """Pre-training pictures and fine-tuning windows must show organs over the same number of tokens
    (and the 2D positional grid must be the window's in-plane grid), or what pre-training learns
    about an organ's extent cannot transfer."""
    import numpy as np

    from mosmos.data.phantoms import make_phantom, phantom_slices
    from mosmos.experiments.recipes import MAP_ROI, MAP_SPACING
    from mosmos.experiments.study import report_image_size

    size = report_image_size()
    assert size == MAP_ROI[0] == MAP_ROI[1]
    pictures = phantom_slices(12, seed=5, image_size=size)
    picture_width = np.mean([(s.image[size // 2] > 0).sum() for s in pictures if s.plane == "axial"])
    volumes = [make_phantom([5, k], MAP_ROI, MAP_SPACING) for k in range(3)]
    window_width = np.mean([(v.image[:, MAP_ROI[1] // 2, MAP_ROI[2] // 2] > -175).sum() for v in volumes])
    assert abs(picture_width - window_width) <= 0.1 * window_width, (picture_width, window_width)


def test_unet2d_study_by_label_ratio_writes_table_plot_and_scores_both_inits_on_the_same_cases(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--quick", "--arch", "unet2d", "--ratios", "0.25", "1.0",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| label ratio |" in printed and "MOSMOS-U-Net on 2D slices" in printed

    summary = json.loads((out / "study.json").read_text())
    assert summary["plan"]["arch"] == "unet2d" and [e["budget"] for e in summary["table"]] == [0.25, 1.0]
    assert summary["held_out"] and "pretrained_maps" not in summary  # tiny-rn's maps: 2 x 2 cells, no diagnosis
    study_md = (out / "study.md").read_text()
    assert "74.86" in study_md and "Fig. 6" in study_md and "Table 4, row 3" in study_md
    with Image.open(out / "study.png") as fig:
        assert fig.size[0] > 200
    configs = {}
    for ratio, train_cases in (("0.25", 1), ("1.0", 4)):  # a share of the 4 training volumes, same held-out set
        for init in ("mosmos", "random"):
            header = json.loads((out / "runs" / f"b{ratio}-s0-{init}" / "events.jsonl").read_text().splitlines()[0])
            assert header["config"]["arch"] == "unet2d" and header["preprocessing"]["spatial_dims"] == 2
            assert header["train_cases"] == train_cases and header["val_cases"] == len(summary["held_out"])
            assert (header["config"]["pretrained"] is not None) == (init == "mosmos")
            configs[ratio, init] = header["config"]
    assert len({c["data"] for c in configs.values()}) == 1
    assert len({c["lr"] for c in configs.values()}) == 1 and len({c["max_steps"] for c in configs.values()}) == 1


def test_a_killed_study_resumes_and_runs_each_run_once(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "study"
    args = ["study", "--out", str(out), "--quick", "--arch", "unet2d", "--ratios", "0.25", "0.5", "1.0",
            "--no-progress"]
    child = subprocess.Popen([sys.executable, "-m", "mosmos", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "runs.csv").is_file() and len((out / "runs.csv").read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert child.poll() is None, "the study finished before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    with open(out / "runs.csv", newline="") as f:
        before = list(csv.DictReader(f))
    assert 1 <= len(before) < 6 and not (out / "study.json").exists()

    assert main(args) == 0
    with open(out / "runs.csv", newline="") as f:
        after = list(csv.DictReader(f))
    keys = [(r["budget"], r["seed"], r["init"]) for r in after]
    assert sorted(keys) == sorted((b, "0", i) for b in ("0.25", "0.5", "1.0") for i in ("mosmos", "random"))
    assert all(row in after for row in before)  # what the killed study measured is kept, not run again
    pretrain_starts = [line for line in (out / "pretrain" / "events.jsonl").read_text().splitlines()
                       if '"event": "start"' in line]
    assert len(pretrain_starts) == 1


def test_study_budget_options_that_cannot_be_run_are_error_lines(tmp_path, capsys):
    with pytest.raises(MosmosError, match="--budgets or as --ratios, not both"):
        StudyPlan.of(False, budgets=[1], ratios=[0.5])
    assert main(["study", "--out", str(tmp_path / "s"), "--ratios", "0", "1.5", "--no-progress"]) == 1
    assert "--ratios 0.0 1.5: each must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert StudyPlan.of(False, arch="unet2d").steps == 400 and StudyPlan.of(False).steps == 200
    assert StudyPlan.of(False, ratios=[0.25, 1]).label_shares() == [(0.25, 0.25), (1.0, 1.0)]


def test_a_study_folder_of_another_plan_is_refused(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--quick", "--arch", "unet2d", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["study", "--out", str(out), "--quick", "--arch", "unet2d", "--ratios", "0.5",
                 "--no-progress"]) == 1
    assert "holds a study of another plan" in capsys.readouterr().err


def test_study_on_real_folders_with_clip_weights_a_clip_arm_and_an_ablation(tmp_path, capsys):
    """The real-folder mode on a tiny ROCO folder and a tiny Decathlon dataset, from a tiny CLIP weights file as
    open_clip's models save their state: pre-trained once without L_mlr, three arms scored on the dataset's own
    validation split."""
    import open_clip
    import torch

    from mosmos.data.phantoms import write_decathlon_dataset, write_roco_folder
    from mosmos.experiments.study import STUDY_TAGS
    from mosmos.models.backbones import canonical_backbone

    roco = write_roco_folder(tmp_path / "roco", 80, image_size=64)
    data = write_decathlon_dataset(tmp_path / "btcv", 2, 1, shape=(64, 64, 32), spacing=(3.0, 3.0, 6.0),
                                   organs=STUDY_TAGS).parent
    weights = tmp_path / "tiny-rn-clip.pt"
    torch.save(open_clip.create_model(canonical_backbone("tiny-rn")).state_dict(), weights)
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--quick", "--arch", "unet2d", "--roco", str(roco), "--data", str(data),
                 "--weights", str(weights), "--backbone", "tiny-rn", "--init", "clip", "--ablate", "mlr",
                 "--roi-size", "64", "64", "--spacing", "3", "3", "6", "--device", "cpu", "--workers", "0",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| label ratio | MOSMOS w/o mlr init Dice | random init Dice | CLIP init Dice |" in printed

    summary = json.loads((out / "study.json").read_text())
    [entry] = summary["table"]
    assert entry["budget"] == 1.0 and all(0.0 <= entry[i]["mean"] <= 1.0 for i in ("mosmos", "random", "clip"))
    assert summary["held_out"] == [str(data / "imagesTr" / "phantom_002.nii.gz")]  # the dataset's validation case
    pretrain = [json.loads(line) for line in (out / "pretrain" / "events.jsonl").read_text().splitlines()]
    assert pretrain[0]["config"]["ablate"] == "mlr" and pretrain[0]["config"]["weights"] == str(weights)
    assert pretrain[0]["config"]["roco"] == str(roco)
    starts = {}
    for init in ("mosmos", "random", "clip"):
        header = json.loads((out / "runs" / f"b1.0-s0-{init}" / "events.jsonl").read_text().splitlines()[0])
        assert header["config"]["data"] == str(data) and header["train_cases"] == 2 and header["val_cases"] == 1
        starts[init] = header["config"]["init"], header["config"]["pretrained"]
    assert starts["clip"] == ("clip", str(weights)) and starts["random"] == ("random", None)
    assert starts["mosmos"][0] == "mosmos" and starts["mosmos"][1].startswith(str(out / "pretrain"))
    study_md = (out / "study.md").read_text()
    assert "without mlr" in study_md and "This study's setting (CLIP weights, ROCO, a real dataset) is the paper's" \
        in study_md


def test_real_folder_options_that_cannot_be_run_are_error_lines(tmp_path, capsys):
    with pytest.raises(MosmosError, match="--roco and --data go together"):
        StudyPlan.of(False, roco=str(tmp_path))
    with pytest.raises(MosmosError, match="--init clip needs --weights"):
        StudyPlan.of(False, clip_arm=True)
    with pytest.raises(MosmosError, match="--roi-size and --spacing set the grid of a real dataset"):
        StudyPlan.of(False, roi_size=[64, 64])
    assert StudyPlan.of(False, roco=str(tmp_path), data=str(tmp_path)).ratios == (0.25, 0.5, 0.75, 1.0)
    assert main(["study", "--out", str(tmp_path / "s"), "--roco", str(tmp_path / "missing"), "--data",
                 str(tmp_path), "--no-progress"]) == 1
    assert "missing: ROCO folder not found" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
