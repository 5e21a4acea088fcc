"""The network's forward through torch.compile (inductor) for a run that it shortens.

Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX), one ViT-B MOSMOS-UNETR window (96^3, bf16)
took 1.90 s eager and 0.68 s compiled (inductor fuses the dtype casts, instance norms and
activations around oneDNN's convolutions and matrix products, which eager runs one by one). The
first compiled call compiles: 75-125 s on that machine (as loaded by other jobs) when inductor's
cache is cold (about the same for a tiny model: it is the C++ kernels' compilation), 6-35 s when it
is warm (a second run of the same model on the same machine). So "auto" runs the first window
eagerly, timed, and compiles only when the windows left would save more than a cold compile costs:
a full abdominal CT with a ViT-B (175 windows) where a window takes over about 1.1 s, not a mid-size
volume (12) or a tiny model's windows (0.2 s each). Those figures are from a machine loaded by other
jobs; on the idle machine a compiled full-size run gained nothing (README, *Segmenting on the CPU*),
and there the first window is fast enough that auto does not compile. The labels are as close to
fp32 as eager bf16's (the same operations in the same number format).

Where compiling fails (no C++ compiler, as in a Slicer install on Windows; a platform inductor does
not support), the windows run eagerly, for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..errors import MosmosError

COMPILE_CHOICES = ("auto", "on", "off")
COLD_COMPILE_S = 120.0  # a cold compile on 2 busy cores (above)
SAVED_FRACTION = 0.64  # of an eager window's time (1.90 s -> 0.68 s)
COMPILING = (f"compiling the network (first run on this machine: about {COLD_COMPILE_S / 60:.0f} min; "
             "later runs reuse the compiled code)")


def check_compile_choice(choice: str) -> None:
    if choice not in COMPILE_CHOICES:
        raise MosmosError(f"compile: expected one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")


def pays_to_compile(seconds_per_window: float, windows_left: int) -> bool:
    return windows_left * seconds_per_window * SAVED_FRACTION > COLD_COMPILE_S


class WindowForward:
    """Calls ``network`` on windows: eagerly, or compiled (once, on the first compiled call)."""

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.compiled = None
        self.failure: str | None = None  # why compiling failed; then always eager
        self.use = self.timing = False
        self.left = 0
        self.status: Callable[[str], None] | None = None

    def plan(self, choice: str, device: torch.device, windows: int,
             status: Callable[[str], None] | None = None) -> None:
        """Before a run of ``windows`` windows: "on" compiles, "off" does not, "auto" (the CPU only)
        times the first window eagerly and compiles if pays_to_compile. ``status(message)`` is told
        before the compile starts (it can take minutes with nothing else to show)."""
        self.use = choice == "on"
        self.timing = choice == "auto" and device.type == "cpu"
        self.left = windows
        self.status = status

    @property
    def compiling(self) -> bool:
        """Whether the run's windows (after the first, with auto) go through torch.compile."""
        return self.use and self.failure is None

    def __call__(self, x: torch.Tensor):
        self.left -= x.shape[0]
        if self.timing:
            self.timing = False
            start = time.perf_counter()
            out = self.network(x)
            self.use = pays_to_compile((time.perf_counter() - start) / x.shape[0], self.left)
            return out
        if self.compiling:
            if self.compiled is None:
                if self.status is not None:
                    self.status(COMPILING)
                self.compiled = torch.compile(self.network, dynamic=False)
            try:
                return self.compiled(x)
            except Exception as e:  # inductor's errors have no common base; eager is always there
                self.failure = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        return self.network(x)
