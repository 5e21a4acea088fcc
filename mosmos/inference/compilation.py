"""The network's forward through torch.compile (inductor) for a run of many windows on the CPU.

Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX), one ViT-B MOSMOS-UNETR window (96^3, bf16)
took 1.90 s eager and 0.68 s compiled (inductor fuses the dtype casts, instance norms and
activations around oneDNN's convolutions and matrix products, which eager runs one by one). The
first call compiles: about 75 s on that machine when inductor's cache is cold, 6 s when it is warm
(a second run of the same model on the same machine), so a run compiles only when it has
COMPILE_MIN_WINDOWS windows or more, where even a cold compile pays for itself. The labels are as
close to fp32 as eager bf16's (the same operations in the same number format).

Where compiling fails (no C++ compiler, as in a Slicer install on Windows; a platform inductor does
not support), the windows run eagerly, for good.
"""

from __future__ import annotations

import torch

from ..errors import MosmosError

# ~1.2 s saved per ViT-B window against a cold compile of ~75 s (2 cores).
COMPILE_MIN_WINDOWS = 64
COMPILE_CHOICES = ("auto", "on", "off")


def check_compile_choice(choice: str) -> None:
    if choice not in COMPILE_CHOICES:
        raise MosmosError(f"compile: expected one of {', '.join(COMPILE_CHOICES)}, got {choice!r}")


def wants_compile(choice: str, device: torch.device, windows: int) -> bool:
    """auto: on the CPU, for COMPILE_MIN_WINDOWS windows or more; on / off: as said."""
    if choice == "auto":
        return device.type == "cpu" and windows >= COMPILE_MIN_WINDOWS
    return choice == "on"


class WindowForward:
    """Calls ``network`` on windows, compiled when asked (compiled once, on the first such call)."""

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.compiled = None
        self.failure: str | None = None  # why compiling failed; then always eager

    def __call__(self, x: torch.Tensor, compile: bool):
        if compile and self.failure is None:
            if self.compiled is None:
                self.compiled = torch.compile(self.network, dynamic=False)
            try:
                return self.compiled(x)
            except Exception as e:  # inductor's errors have no common base; eager is always there
                self.failure = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return self.network(x)
