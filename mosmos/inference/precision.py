"""Which number format the network runs in: bf16 autocast where the hardware computes it natively
(CUDA GPUs from Ampere on; CPUs whose oneDNN kernels have native bf16, i.e. AMX tiles or AVX512-BF16,
where a ViT-B UNETR forward takes about half the fp32 time), fp32 elsewhere (emulated bf16 is slower
than fp32, on older GPUs as on CPUs)."""

from __future__ import annotations

import torch

from ..errors import MosmosError
from ..options import CPU, CUDA, PRECISIONS



def cpu_has_native_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    # Private, and kept: torch has no public query for these two CPU features (torch.backends.cpu's capability
    # string names AVX512 but not AMX or AVX512-BF16), and oneDNN's bf16 kernels are native only with them.
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def gpu_has_native_bf16() -> bool:
    """Ampere (compute capability 8) or later: torch's default also counts the emulated bf16 of older GPUs."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> tuple[str, list[str]]:
    """("fp32" | "bf16", notices). bf16 asked for where it is not native runs fp32, with a notice;
    auto picks bf16 where native, fp32 silently elsewhere."""
    precision = str(precision or "auto").lower()
    if precision not in PRECISIONS:
        raise MosmosError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    gpu = device.type == CUDA
    native = gpu_has_native_bf16() if gpu else device.type == CPU and cpu_has_native_bf16()
    if precision == "fp32" or (precision == "auto" and not native):
        return "fp32", []
    if not native:
        lacks = "GPU has no native bf16 (before Ampere)" if gpu else "CPU has no native bf16 (AMX or AVX512-BF16)"
        return "fp32", [f"bf16 was asked for but this {lacks}: ran in fp32"]
    return "bf16", []
