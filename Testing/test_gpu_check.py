"""The GPU check (benchmarks/gpu_check.py): its CPU smoke run passes in the suite, its correctness items run as
tests where a CUDA GPU is (marked ``gpu``, skipped elsewhere, saying so), and the CUDA-only choices it relies on
(the GPU of a torchrun rank, native bf16 or not) are checked on the CPU by asking torch's questions differently."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
NO_GPU = "no CUDA GPU on this machine: these items run where one is (make gpu-check, or pytest -m gpu)"


def load_check():
    """benchmarks/gpu_check.py as a module (registered, as its dataclasses need)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def test_cpu_smoke_run_passes_every_item_it_can():
    """The whole script at tiny sizes on the CPU, as `make gpu-check` runs it on a GPU: one JSON object, every
    item passed but the out-of-memory one, which needs a GPU's memory to run out."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True, timeout=900)
    report = json.loads(done.stdout)
    items = report["items"]
    failed = {name: item.get("error") for name, item in items.items() if item["status"] == "failed"}
    assert not failed and done.returncode == 0, (failed, done.stderr[-2000:])
    assert report["mode"] == "cpu-smoke" and report["device"] == "cpu" and report["torch"] == torch.__version__
    assert {n for n, item in items.items() if item["status"] == "skipped"} == {"out_of_memory"}
    assert "needs a CUDA GPU" in items["out_of_memory"]["reason"]
    assert items["device_auto"]["slicer_cpu"] == "cpu" and items["device_auto"]["training_auto"] == "cpu"
    assert items["torchrun"]["backend"] == "gloo" and items["torchrun"]["world_size"] == 1
    for name in ("finetune", "pretrain"):
        assert 0 < items[name]["resumed_at_step"] < items[name]["steps"], items[name]
    assert items["segment"]["label_agreement"] == 1.0  # fp32 against fp32 on the same CPU
    for ratio in ("segment_speed", "mosmos_over_monai"), ("finetune_speed", "mosmos_over_monai"), \
                 ("pretrain_speed", "mosmos_over_open_clip"):
        assert items[ratio[0]][ratio[1]] > 0


def test_a_failing_item_is_one_line_and_the_others_still_run(tmp_path, monkeypatch):
    """Without the fine-tune, segment and finetune_speed fail each with a line saying why; an item that raises
    anything else is reported with its type and message, and the items after it still run."""
    check = load_check()
    monkeypatch.setitem(check.ITEMS, "device_auto", lambda run: 1 / 0)
    report = check.gpu_check(True, tmp_path, ["device_auto", "segment", "finetune_speed"])
    errors = {name: (item["status"], item.get("error")) for name, item in report["items"].items()}
    assert errors == {"device_auto": ("failed", "ZeroDivisionError: division by zero"),
                      "segment": ("failed", "needs the finetune item's model, which it did not write"),
                      "finetune_speed": ("failed", "needs the finetune item's step times")}
    assert report["passed"] is False


def test_a_bare_cuda_is_the_gpu_of_this_torchrun_rank(monkeypatch):
    from mosmos.inference.segmenter import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_only_on_gpus_that_compute_it_natively(monkeypatch, native):
    """Before Ampere torch still says bf16 is supported (emulated, slower): inference runs fp32, training fp16."""
    from mosmos.inference.precision import resolve_precision
    from mosmos.train.optim import resolve_precision as training_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu) == ("bf16" if native else "fp32", [])
    assert training_precision("auto", gpu) == (torch.bfloat16 if native else torch.float16)
    chosen, notes = resolve_precision("bf16", gpu)
    assert chosen == ("bf16" if native else "fp32")
    assert notes == ([] if native else
                     ["bf16 was asked for but this GPU has no native bf16 (before Ampere): ran in fp32"])


# --- where a CUDA GPU is: the correctness items, through the script's own functions ----------------------------

@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip(NO_GPU)
    check = load_check()
    run = check.Run(check.GPU, True, tmp_path_factory.mktemp("gpu-check"))
    return check, run, check.run_item("finetune", run)


def passed(result: dict) -> None:
    assert result["status"] == "passed", result.get("error") or result.get("reason")


@pytest.mark.gpu
def test_gpu_fine_tune_runs_resumes_and_writes_a_model(gpu_run):
    passed(gpu_run[2])


@pytest.mark.gpu
@pytest.mark.parametrize("item", ["device_auto", "pretrain", "torchrun", "segment", "out_of_memory"])
def test_gpu_item(gpu_run, item):
    check, run, _ = gpu_run
    passed(check.run_item(item, run))
