"""The network's forward through torch.compile (inductor) for a run that it shortens.

A compile's cost depends on inductor's cache far more than on the model: on a 2-core AMD EPYC
(AVX512-BF16, no AMX) the first compiled call of a ViT-B MOSMOS-UNETR (96^3 windows, bf16,
channels-last) took 135 s with an empty cache (the C++ kernels' compilation) and 7 s once the cache
held them (a second run of the same architecture; the weights are inputs of the compiled code, so
another model file of the same architecture is warm too). A full abdominal CT's eager windows take
about 100 s there, so a cold compile never pays on the run that pays for it, and "auto" never
compiles on a cold cache: a new machine's first run is the eager one.

Whether the cache is warm is known from a record this module writes into inductor's cache folder
after a compiled run (removing the folder removes the record with the code it describes): per
architecture, window shape, precision, torch version and CPU kind, the compiled window's seconds
and the warm compile's. With a record, "auto" times two eager windows (the first also pays one-time
costs) and compiles when the windows left would save more than the warm compile costs. "on" always
compiles (and so builds the cache and the record); "off" never does.

Where compiling fails (no C++ compiler, as in a Slicer install on Windows; a platform inductor does
not support), the windows run eagerly, for good.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import MosmosError
from ..files.atomic import atomic_write_bytes
from ..options import COMPILE_MODES, CPU

WARM_COMPILE_S = 10.0  # a warm compile when a record has only seen the cold one (7 s measured, above)
TIMED_WINDOWS = 2      # eager windows auto times before it decides
COMPILING = ("compiling the network (the first time on this machine takes minutes; "
             "later runs reuse the compiled code)")


def check_compile_choice(choice: str) -> None:
    if choice not in COMPILE_MODES:
        raise MosmosError(f"compile: expected one of {', '.join(COMPILE_MODES)}, got {choice!r}")


def records_folder() -> Path:
    """Where the records live: inside inductor's cache folder (TORCHINDUCTOR_CACHE_DIR, or its default), which
    this does not create (inductor's own cache_dir() would)."""
    # Private, and kept: inductor has no public name for where its cache lives, and the records must sit beside
    # the compiled code they describe (a different folder would outlive or miss a cleared cache).
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()).absolute() / "mosmos"


def compile_key(architecture: dict, window: tuple[int, ...], precision: str) -> str:
    """What the compiled code depends on, hashed: the architecture (not the weights), the window's shape and
    layout, the number format, torch's version and the CPU's vector extensions."""
    # (CPU is the key "cpu" the records were hashed with)
    what = {"architecture": architecture, "window": list(window), "precision": precision,
            "torch": torch.__version__, CPU: torch.backends.cpu.get_cpu_capability()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def read_record(key: str) -> dict | None:
    try:
        record = json.loads((records_folder() / f"{key}.json").read_text())
        return record if isinstance(record.get("compiled_window_s"), (int, float)) else None
    except (OSError, ValueError, AttributeError):
        return None


def pays_to_compile(eager_window_s: float, windows_left: int, record: dict | None) -> bool:
    """Whether compiling now shortens this run: only on a warm cache (a ``record``), when the windows left
    save more than the warm compile costs."""
    if record is None:
        return False
    saved = windows_left * (eager_window_s - record["compiled_window_s"])
    return saved > record.get("warm_compile_s", WARM_COMPILE_S)


class WindowForward:
    """Calls ``network`` on windows: eagerly, or compiled (once, on the first compiled call).

    Args:
        network: the segmentation network, already on its device and in its layout.
        architecture: what identifies its compiled code besides the window (the model header's "config").
    """

    def __init__(self, network: torch.nn.Module, architecture: dict):
        self.network = network
        self.architecture = architecture
        self.compiled = None
        self.compiled_key = None
        self.failure: str | None = None  # why compiling failed; then always eager
        self.use = False
        self.left = self.timing = 0
        self.eager_s: list[float] = []
        self.compiled_s: list[float] = []   # this run's compiled calls, the compile first where it compiled
        self.compiled_now = False
        self.key = None
        self.record: dict | None = None
        self.status: Callable[[str], None] | None = None

    def plan(self, choice: str, device: torch.device, windows: int, window: tuple[int, ...], precision: str,
             status: Callable[[str], None] | None = None) -> None:
        """Before a run of ``windows`` windows of shape ``window`` (batch and channels included) in
        ``precision``: "on" compiles, "off" does not, "auto" (the CPU only) compiles when pays_to_compile,
        judged after TIMED_WINDOWS eager windows (at once when this process has compiled it already).
        ``status(message)`` is told before a compile starts."""
        self.key = compile_key(self.architecture, window, precision)
        if self.compiled_key != self.key:
            self.compiled = None
        self.record = read_record(self.key) if device.type == CPU else None
        auto = choice == "auto" and device.type == CPU
        self.use = choice == "on" or (auto and self.compiled is not None)
        self.timing = min(TIMED_WINDOWS, windows - 1) if auto and not self.use and self.record else 0
        self.left = windows
        self.eager_s, self.compiled_s, self.compiled_now = [], [], False
        self.status = status

    @property
    def compiling(self) -> bool:
        """Whether the run's windows (after the timed ones, with auto) go through torch.compile."""
        return self.use and self.failure is None

    def __call__(self, x: torch.Tensor):
        self.left -= x.shape[0]
        if self.timing:
            self.timing -= 1
            start = time.perf_counter()
            out = self.network(x)
            self.eager_s.append((time.perf_counter() - start) / x.shape[0])
            if not self.timing:
                self.use = pays_to_compile(min(self.eager_s), self.left, self.record)
            return out
        if self.compiling:
            start = time.perf_counter()
            try:
                if self.compiled is None:
                    if self.status is not None:
                        self.status(COMPILING)
                    self.compiled, self.compiled_key, self.compiled_now = \
                        torch.compile(self.network, dynamic=False), self.key, True
                out = self.compiled(x)
            except torch.cuda.OutOfMemoryError:
                raise  # not a compiler failure: the caller's out-of-memory fallback takes it
            except Exception as e:  # inductor's errors have no common base; eager is always there
                self.failure = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
                self.compiled = None
            else:
                self.compiled_s.append((time.perf_counter() - start) / x.shape[0])
                return out
        return self.network(x)

    def finish(self, device: torch.device) -> None:
        """After a run that compiled on the CPU and then ran at least two compiled windows: the record of what
        it measured (a later run's auto decides from it)."""
        if device.type != CPU or not self.compiled_now or len(self.compiled_s) < 3:
            return
        window_s = statistics.median(self.compiled_s[1:])
        compile_s = round(max(0.0, self.compiled_s[0] - window_s), 1)
        record = {"compiled_window_s": round(window_s, 4)}
        if self.record is None:
            record["cold_compile_s"] = compile_s
        else:
            record.update(cold_compile_s=self.record.get("cold_compile_s"), warm_compile_s=compile_s)
        try:
            records_folder().mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(records_folder() / f"{self.key}.json", (json.dumps(record) + "\n").encode())
        except (OSError, MosmosError):  # atomic_write_bytes says MosmosError
            pass  # a read-only cache folder: later runs are judged as on a cold cache
