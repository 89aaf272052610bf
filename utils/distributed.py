"""The few torch.distributed helpers training needs (a no-op outside ``torchrun``)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .cli import UsageError
from .cpu_memory import keep_freed_memory


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the run: rank, world size and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's CUDA device when there is one, else the CPU. On the CPU, malloc is
    also told to keep freed memory for reuse (``utils.cpu_memory``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        torch.cuda.set_device(device)
    else:
        keep_freed_memory()
    return device


def init_process(device_name: str = "auto") -> ProcessInfo:
    """Join the process group when launched by ``torchrun`` (NCCL on CUDA, gloo on the CPU).

    Under torchrun every rank takes the GPU of its ``LOCAL_RANK``: ``--device cuda:N`` would put
    every rank on GPU N, and is refused."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and ":" in device_name:
        raise UsageError(f"--device {device_name} under torchrun would put all {world_size} processes on one GPU; "
                         "pass --device cuda (or auto): each process takes the GPU of its LOCAL_RANK")
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ProcessInfo(rank, world_size, local_rank, device)


def all_ranks_ok(ok: bool, device: torch.device) -> bool:
    """Whether ``ok`` holds on every rank (one all-reduce; the value itself outside torchrun):
    every rank then takes the same branch, so a failure seen by one rank stops them all at the
    same point instead of leaving the others waiting in the next collective."""
    return all_ranks_agree(ok, False, device)[0]


def all_ranks_agree(ok: bool, stop: bool, device: torch.device) -> tuple[bool, bool]:
    """(``ok`` on every rank, ``stop`` on any rank) in one all-reduce (the values themselves
    outside torchrun): a preemption signal seen by one rank stops every rank after the same step."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok, stop
    flags = torch.tensor([1 if ok else 0, 0 if stop else 1], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    all_ok, none_stopped = flags.tolist()
    return bool(all_ok), not none_stopped


def gather_objects(items: list) -> list:
    """Every rank's ``items`` concatenated in rank order (the items themselves outside torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer reads real time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
