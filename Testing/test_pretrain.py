"""Report-supervised pre-training end to end on generated ROCO folders (tiny-vit)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import events, kill_after_checkpoint, run_cli, run_torchrun
from mosmos.data.phantoms import write_roco_folder
from mosmos.files.modelfile import load_model
from mosmos.train.pretrain import mean_average_precision


@pytest.fixture(scope="module")
def small_roco(tmp_path_factory) -> Path:
    return write_roco_folder(tmp_path_factory.mktemp("roco") / "roco", 96, seed=1)


def test_average_precision_by_hand():
    scores = np.array([[0.9], [0.8], [0.3], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    # hits at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert mean_average_precision(scores, targets) == pytest.approx((1 + 2 / 3) / 2)


def test_tiny_pretraining_learns_tags_and_report_matching(tmp_path):
    """Both losses fall and tag predictions on held-out pairs beat chance. tiny-rn (the RN50 code
    path): from random weights on 320 pairs, tiny-vit's tag mAP stays within ~0.08 of chance in
    this budget (measured), the convolutional tower learns the tags within it."""
    from mosmos.train.config import PretrainConfig
    from mosmos.train.pretrain import pretrain

    roco = write_roco_folder(tmp_path / "roco", 400, seed=0)
    log = tmp_path / "events.jsonl"
    model_path = pretrain(PretrainConfig(roco=str(roco), out=str(tmp_path / "out"), backbone="tiny-rn",
                                         epochs=8, batch_size=32, lr=1e-3, warmup_steps=10, workers=0,
                                         log_every=1, seed=0), events=str(log), progress=False)
    ev = events(log)
    steps = [e for e in ev if e["event"] == "step"]
    epochs = [e for e in ev if e["event"] == "val"]
    first = np.mean([[s["irc"], s["mlr"]] for s in steps[:5]], axis=0)
    last = np.mean([[s["irc"], s["mlr"]] for s in steps[-5:]], axis=0)
    assert last[0] < first[0] and last[1] < first[1], (first, last)
    assert epochs[-1]["val_irc"] < epochs[0]["val_irc"]

    # Chance: random scores rank positives at the tags' prevalence on average.
    from mosmos.data.roco import RocoDataset

    val = RocoDataset(roco, splits="validation")
    targets = np.stack([val[i][2] for i in range(len(val))])
    rng = np.random.default_rng(0)
    chance = np.mean([mean_average_precision(rng.random(targets.shape), targets) for _ in range(50)])
    best = max(e["val_map"] for e in epochs)
    print(f"held-out tag mAP {best:.3f} vs chance {chance:.3f}")
    assert best > chance + 0.1

    tensors, header = load_model(model_path)
    assert header["kind"] == "mosmos-pretrain" and header["config"]["backbone"] == "tiny-rn"
    assert header["provenance"]["stage"] == "pretrain" and len(header["config"]["tags"]) == 20
    card = header["card"]
    assert card["stage"] == "pretrain" and card["backbone"] == "tiny-rn" and card["init"] == {"kind": "random"}
    assert card["validation"]["val_loss"] == pytest.approx(min(e["val_loss"] for e in epochs), abs=1e-5)
    assert card["data"] == {"folder": "roco", "cases": ev[0]["train_pairs"], "label_ratio": None}
    done = ev[-1]
    assert done["event"] == "done" and done["step"] == steps[-1]["total_steps"] == 8 * ev[0]["steps_per_epoch"]


def _pretrain_args(roco: Path, out: Path, log: Path, *extra: str) -> list[str]:
    return ["pretrain", "--roco", str(roco), "--out", str(out), "--backbone", "tiny-vit", "--epochs", "2",
            "--batch-size", "16", "--lr", "1e-3", "--warmup-steps", "2", "--workers", "0", "--seed", "3",
            "--checkpoint-every", "2", "--log-every", "1", "--events", str(log), "--no-progress", *extra]


def test_killed_run_resumes_to_the_same_model(small_roco, tmp_path):
    """SIGKILL mid-epoch, then --resume: same step count and the very same weights as a clean run."""
    clean = run_cli(*_pretrain_args(small_roco, tmp_path / "clean", tmp_path / "clean.jsonl"))
    assert clean.returncode == 0, clean.stderr
    clean_done = events(tmp_path / "clean.jsonl")[-1]

    out, log = tmp_path / "killed", tmp_path / "killed.jsonl"
    killed_at = kill_after_checkpoint(_pretrain_args(small_roco, out, log), log)  # inside the first epoch
    assert killed_at < clean_done["step"]

    resumed = run_cli(*_pretrain_args(small_roco, out, log, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    ev = events(log)
    restart = [e for e in ev if e["event"] == "start"][-1]
    assert 0 < restart["resumed_step"] <= killed_at
    done = ev[-1]
    assert done["event"] == "done" and done["step"] == clean_done["step"]
    assert done["rank_digests"] == clean_done["rank_digests"]
    load_model(out / "pretrained.safetensors")
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_two_process_ddp_ends_identical_with_one_model_file(small_roco, tmp_path):
    out, log = tmp_path / "ddp", tmp_path / "ddp.jsonl"
    result = run_torchrun(2, *_pretrain_args(small_roco, out, log))
    assert result.returncode == 0, result.stderr[-2000:]
    ev = events(log)
    assert [e["event"] for e in ev].count("start") == 1  # only rank 0 writes
    assert ev[0]["world_size"] == 2
    done = ev[-1]
    assert len(done["rank_digests"]) == 2 and done["rank_digests"][0] == done["rank_digests"][1]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "pretrained.safetensors"]
    tensors, header = load_model(out / "pretrained.safetensors")
    assert header["provenance"]["stage"] == "pretrain"


@pytest.mark.parametrize("case", ["missing_captions", "empty", "unknown_backbone"])
def test_bad_input_is_one_line_and_nonzero(small_roco, tmp_path, case):
    roco, backbone = tmp_path / "roco", "tiny-vit"
    if case == "missing_captions":
        shutil.copytree(small_roco, roco)
        (roco / "data" / "train" / "radiology" / "captions.txt").unlink()
    elif case == "empty":
        roco.mkdir()
    else:
        roco, backbone = small_roco, "vit-huge-99"
    r = run_cli("pretrain", "--roco", str(roco), "--out", str(tmp_path / "o"), "--backbone", backbone,
                "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress")
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mosmos pretrain: error:"), r.stderr
    assert "Traceback" not in r.stderr
    if case == "unknown_backbone":
        assert "vit-huge-99" in lines[0] and "ViT-B-16" in lines[0]
    else:
        assert str(roco) in lines[0]


def test_corrupt_jpeg_is_skipped_and_counted(small_roco, tmp_path, caplog):
    from mosmos.train.config import PretrainConfig
    from mosmos.train.pretrain import pretrain

    roco = tmp_path / "roco"
    shutil.copytree(small_roco, roco)
    images = sorted((roco / "data" / "train" / "radiology" / "images").iterdir())
    images[0].write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with caplog.at_level("WARNING"):
        path = pretrain(PretrainConfig(roco=str(roco), out=str(tmp_path / "o"), backbone="tiny-vit", epochs=1,
                                       batch_size=16, workers=0, max_steps=2), progress=False)
    assert path.exists()
    warnings = [r.getMessage() for r in caplog.records if "ROCO train" in r.getMessage()]
    assert len(warnings) == 1 and "1 unreadable" in warnings[0]
