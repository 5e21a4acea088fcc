"""The CUDA-only branches that a CPU machine can still reach by standing in for the GPU's answers: a model
too large for the GPU's memory, an out-of-memory error inside a compiled window, per-stage seconds that wait
for the GPU, and the training loaders' workers. (The GPU itself: benchmarks/gpu_check.py and the
``gpu``-marked tests.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mosmos.errors import MosmosError
from mosmos.inference import segmenter
from mosmos.inference.compilation import WindowForward
from mosmos.inference.network import load_segmentation_model
from mosmos.train.loop import TrainingRun

from inference_stub import write_stub_model

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.9 GiB total capacity)"


def test_a_model_larger_than_the_gpus_free_memory_is_one_line_naming_the_file(tmp_path, monkeypatch):
    model = write_stub_model(tmp_path / "big.safetensors")

    def out_of_memory(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError(OOM)

    monkeypatch.setattr(torch.nn.Module, "to", out_of_memory)
    with pytest.raises(MosmosError) as error:
        load_segmentation_model(model, "cpu")
    message = str(error.value)
    assert message.startswith(f"{model}: the model does not fit") and "--device cpu" in message
    assert "\n" not in message and error.value.__cause__ is None and error.value.__suppress_context__


def test_out_of_memory_in_a_compiled_window_reaches_the_fallback_not_the_compile_failure_notice():
    forward = WindowForward(torch.nn.Identity(), {})

    def compiled(x):
        raise torch.cuda.OutOfMemoryError(OOM)

    forward.compiled, forward.use, forward.left = compiled, True, 4
    with pytest.raises(torch.cuda.OutOfMemoryError):
        forward(torch.zeros(1, 1, 2, 2, 2))
    assert forward.failure is None and forward.compiling  # a later, smaller attempt may still compile

    def broken(x):
        raise RuntimeError("inductor: no C compiler")

    forward.compiled = broken
    x = torch.ones(1, 1, 2, 2, 2)
    assert torch.equal(forward(x), x)  # a real compile failure still runs eagerly, and says why
    assert forward.failure == "RuntimeError: inductor: no C compiler" and not forward.compiling


def test_stage_seconds_wait_for_the_gpus_queued_work_and_only_there(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    segmenter.synchronized_clock(torch.device("cpu"))
    assert waited == []
    segmenter.synchronized_clock(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_loaders_keep_their_workers_between_epochs(workers):
    loop = SimpleNamespace(cfg=SimpleNamespace(workers=workers), device=torch.device("cpu"))
    loader = TrainingRun.loader(loop, list(range(4)), None, batch_size=2)
    assert loader.persistent_workers is (workers > 0) and loader.num_workers == workers
