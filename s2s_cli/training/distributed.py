"""torch.distributed set-up from the environment ``torchrun`` provides (gloo on CPU, NCCL on CUDA).

One code path serves one process, several GPUs on one machine and several machines: ``torchrun``
sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; this module only reads them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_process_group: bool = False  # this run created the group, so it destroys it at the end

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0, or not distributed: the process that writes the save directory."""
    return not launched_by_torchrun() or os.environ["RANK"] == "0"


def init_distributed(device_kind: str, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group torchrun set up; a single process needs none.

    ``timeout_minutes`` bounds how long a collective waits for a silent peer (a node that vanished
    without closing its connections); it must exceed the longest validation plus checkpoint save,
    which rank 0 does while the others wait.
    """
    if not launched_by_torchrun():
        return DistributedContext()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    owns = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        owns = True
    return DistributedContext(rank, world_size, local_rank, owns)


# What a failed collective says, by backend: gloo when a peer's connection closes or times out,
# NCCL through its watchdog; torch >= 2.1 also raises torch.distributed.DistError subclasses.
_COMMUNICATION_FAILURES = (
    "gloo",
    "NCCL",
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "Timed out",
    "timed out",
)


def is_communication_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing (a peer died, the network went, a timeout)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(err, dist_error):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _COMMUNICATION_FAILURES)


def all_reduce_sum(value: float, context: DistributedContext, device: torch.device) -> float:
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def all_reduce_tensor(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a stop request)."""
    return all_reduce_sum(float(flag), context, device) > 0


def shutdown(context: DistributedContext) -> None:
    """Leave the process group this run created (NCCL warns at exit about one left open)."""
    if context.owns_process_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
