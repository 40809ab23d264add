"""Process-group lifecycle: one place that knows about torchrun, devices and ranks.

Under torchrun (or any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR) every process joins
the default group: NCCL when CUDA is available, gloo otherwise.  Multi-node runs work through
torchrun's c10d rendezvous unchanged, because torchrun exports the same variables.  Without
those variables the program runs as a single process and no group is created, so the same
code paths run in tests, in the example and on one GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as torch_dist
from absl import logging

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_info: DistInfo | None = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from e


def pick_device(local_rank: int, device: str | None = None) -> torch.device:
    """CUDA device of this local rank when CUDA is present (or asked for), else the CPU."""
    if device is not None and device != "auto":
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device("cuda", local_rank)
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init(device: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Joins the process group described by the environment; idempotent.

    ``device`` may force 'cpu' (gloo) even where CUDA exists; 'auto'/None picks CUDA if present.
    """
    global _info
    if _info is not None:
        return _info
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}; check the launcher")
    chosen = pick_device(local_rank, device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        kwargs = {"device_id": chosen} if backend == "nccl" else {}
        torch_dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    _info = DistInfo(rank, local_rank, world_size, local_world_size, chosen)
    if world_size > 1:
        logging.info("rank %d/%d (local %d) on %s", rank, world_size, local_rank, chosen)
    return _info


def info() -> DistInfo:
    """The current process's place; a single CPU/GPU process if `init` was never called."""
    return _info if _info is not None else init()


def shutdown() -> None:
    """Leaves the process group; safe to call twice and after a failure."""
    global _info
    if torch_dist.is_available() and torch_dist.is_initialized():
        with contextlib.suppress(Exception):
            torch_dist.destroy_process_group()
    _info = None


@contextlib.contextmanager
def session(device: str | None = None) -> Iterator[DistInfo]:
    """Joins the group for the duration of a block and always leaves it, also on errors."""
    try:
        yield init(device)
    finally:
        shutdown()


def rank() -> int:
    return info().rank


def world_size() -> int:
    return info().world_size


def is_main() -> bool:
    return info().is_main


def barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        device = info().device
        torch_dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over all ranks in place (a no-op in a single process) and returns it."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """Sends a picklable object from ``src`` to every rank."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: object) -> list[object]:
    """Collects one picklable object per rank, in rank order."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def log_main(msg: str, *args: object) -> None:
    """absl INFO on rank 0 only, so an 8-GPU job prints each line once."""
    if is_main():
        logging.info(msg, *args)


def warn_main(msg: str, *args: object) -> None:
    if is_main():
        logging.warning(msg, *args)
