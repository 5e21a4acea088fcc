"""Process-group set-up for ``torchrun`` (DDP); a single process needs nothing of it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..options import CPU, CUDA, local_rank


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # the process group's ("nccl", "gloo"); None when there is none

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain single process (readable after the group is gone)."""
    return os.environ.get("RANK", "0") == "0"


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any: also a group of one
    process, so that a 1-process torchrun runs the very DDP and collective code of a larger one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not launched_by_torchrun():
        return DistInfo()
    if device.type == CUDA:
        # NCCL's collectives (and all_gather_object's tensors) go to the current device, which is cuda:0 in
        # every rank unless each rank sets its own
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == CUDA else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank(), dist.get_backend())


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    from ..errors import MosmosError

    if name == "auto":
        name = CUDA if torch.cuda.is_available() else CPU
    if name == CUDA:
        if not torch.cuda.is_available():
            raise MosmosError("--device cuda: no usable CUDA GPU (use --device cpu)")
        return torch.device(CUDA, local_rank % torch.cuda.device_count())
    if name != CPU:
        raise MosmosError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(CPU)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def all_gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def gather_digests(state: dict[str, torch.Tensor], info: DistInfo) -> list[str]:
    """Each rank's SHA-256 of its parameters: DDP replicas must end identical."""
    from ..files.modelfile import tensors_digest

    mine = tensors_digest(state)
    if not info.enabled:
        return [mine]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out
