"""The micro-batches of one optimizer step, identical for any split of the global batch.

The global batch of B samples is cut into W x A micro-batches (W ranks, A accumulation steps
per rank). Micro-step j of rank r plays "virtual rank" v = r * A + j of a W * A-way data
parallel job: it reads from its own loader (rank v of W * A) and draws noise from its own
generator (seed + v). So one process with A = 2 computes exactly the micro-batches that two
processes with A = 1 compute, and the weights agree up to float summation order.
"""

from __future__ import annotations

import time
from typing import Iterator

import torch
from torch.utils.data import Dataset

from mmgin.data.loader import DistributedBatchLoader

Batch = dict


def accumulation_steps(batch_size: int, micro_batch_size: int | None, world_size: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) for a global `batch_size` over `world_size` ranks."""
    if batch_size % world_size:
        raise ValueError(
            f"Train.batch_size={batch_size} (the global batch) does not divide over {world_size} "
            "ranks; pick a multiple of the number of GPUs"
        )
    per_rank = batch_size // world_size
    micro = per_rank if micro_batch_size is None else int(micro_batch_size)
    if micro < 1 or per_rank % micro:
        raise ValueError(
            f"Train.micro_batch_size={micro_batch_size} does not divide the per-rank batch "
            f"{per_rank} (= batch_size {batch_size} / {world_size} ranks); pick a divisor of {per_rank}"
        )
    return micro, per_rank // micro


class MicroBatchSource:
    """Yields, per optimizer step, this rank's list of A micro-batches (CPU, collated)."""

    def __init__(self, dataset: Dataset, micro_batch_size: int, accumulation: int, rank: int, world_size: int,
                 seed: int, num_workers: int):
        workers = 0 if num_workers == 0 else max(1, num_workers // accumulation)
        self.loaders = [
            DistributedBatchLoader(dataset, batch_size=micro_batch_size, seed=seed, rank=rank * accumulation + j,
                                   world_size=world_size * accumulation, num_workers=workers, drop_last=True)
            for j in range(accumulation)
        ]
        self._iterators: list[Iterator[Batch] | None] = [None] * accumulation
        self.wait_seconds = 0.0

    def steps_per_epoch(self) -> int:
        return len(self.loaders[0])

    def _next(self, j: int) -> Batch:
        for _ in range(2):
            if self._iterators[j] is None:
                self._iterators[j] = iter(self.loaders[j])
            try:
                return next(self._iterators[j])
            except StopIteration:  # the epoch ended; the loader moved to the next one
                self._iterators[j] = None
        raise RuntimeError("the training loader yields no batch; is the dataset empty?")

    def next_step(self) -> list[Batch]:
        start = time.perf_counter()
        batches = [self._next(j) for j in range(len(self.loaders))]
        self.wait_seconds = time.perf_counter() - start
        return batches

    def state_dict(self) -> list[dict]:
        return [loader.state_dict() for loader in self.loaders]

    def load_state_dict(self, states: list[dict]) -> None:
        if len(states) != len(self.loaders):
            raise ValueError(
                f"the checkpoint holds {len(states)} loader positions per rank, this run uses "
                f"{len(self.loaders)} micro-steps; resume with the same micro_batch_size"
            )
        for loader, state in zip(self.loaders, states):
            loader.load_state_dict(state)
        self._iterators = [None] * len(self.loaders)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Tensors to the device (non-blocking from pinned memory), floating ones as float32 (the
    loader delivers features in their storage dtype); strings stay."""

    def move(value: torch.Tensor) -> torch.Tensor:
        value = value.to(device, non_blocking=True)
        return value.float() if value.is_floating_point() else value

    return {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
