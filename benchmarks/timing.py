"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/bench_*.py``)."""

from __future__ import annotations

import time

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with its thread count, for the result rows."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"


def timed_steps(step, steps: int, device: torch.device) -> float:
    """Seconds per call of ``step`` over ``steps`` calls, after one warm-up call (allocator, kernels);
    on CUDA, synchronised and with the peak-memory counter reset after the warm-up."""
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps
