"""Distributed, deterministic, resumable batch loading.

Every epoch has one permutation of the whole dataset, drawn from a CPU generator seeded with
``seed + epoch``, so every rank computes the same permutation without communicating. Rank r
takes positions r, r + W, r + 2W, ... (W = world size) and cuts them into micro-batches (each
batch's indices in ascending order, so rows are read in file order); every
rank gets the same number of batches (full ones with ``drop_last``; otherwise the last may be
short and a few samples repeat so that the ranks stay even). The loader counts the batches
it has handed out, so ``state_dict()`` saved at any step resumes at exactly the next batch.

Batches are read by the dataset's ``__getitems__`` (one sorted gather per feature), by
default in a pool of threads of the training process: the gathers release the GIL, write
straight into page-locked memory when CUDA is available, and touch no fresh shared-memory
pages. (DataLoader worker processes, ``workers='processes'``, gather into new shared memory
for every batch, and first-touching those pages costs ~5x the gather itself: 4.1k samples/s
from 8 processes on the H100 machine, bench/README.md.) Either way ``num_workers`` batches are
read at once and ``prefetch_factor`` per worker are kept ahead.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import gin
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmgin import dist, preemption
from mmgin.data.datasets import identity_collate
from mmgin.data.store import pinned_batches

WORKER_KINDS = ("threads", "processes")


def rank_batches(
    size: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int, drop_last: bool
) -> list[list[int]]:
    """The index lists of one rank's batches in one epoch (see the module docstring).

    Without ``drop_last`` the permutation is padded with its own first entries up to a multiple
    of the world size (as DistributedSampler does), so every rank has the same number of
    batches, the last one possibly short: collectives inside the loop stay matched.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed) + int(epoch))
    permutation = torch.randperm(size, generator=generator)
    if drop_last:
        per_rank = (size // world_size) // batch_size * batch_size
        positions = permutation[rank::world_size][:per_rank]
    else:
        padding = -size % world_size
        if padding:
            permutation = torch.cat([permutation, permutation.repeat(padding // max(size, 1) + 1)[:padding]])
        positions = permutation[rank::world_size]
    # Each batch's indices ascending: the stores read rows in file order, nothing to reorder.
    return [sorted(chunk.tolist()) for chunk in positions.split(batch_size)] if len(positions) else []


class _EpochBatchSampler:
    """Yields this rank's batches of ``epoch`` from batch ``start`` on; mutated between epochs.

    It runs in the main process (DataLoader sends its index lists to the workers), so the
    loader can move it to another epoch or position while keeping persistent workers.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world_size: int, drop_last: bool):
        self.args = (size, batch_size, seed)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def batches(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, rank_batches(*self.args, epoch, self.rank, self.world_size, self.drop_last))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch)[self.start:])

    def __len__(self) -> int:
        return len(self.batches(self.epoch)) - self.start


def _seed_worker(worker_id: int) -> None:
    """numpy and random get seeds derived from the worker's torch seed (set by DataLoader);
    SIGTERM is left to the main process (mmgin.preemption)."""
    preemption.ignore_sigterm_in_worker(worker_id)
    seed = torch.initial_seed() % 2**31
    np.random.seed(seed)
    random.seed(seed)


class _ThreadedReader:
    """Batches of ``dataset`` for a sequence of index lists, read ahead by a thread pool and
    handed out in order. The pool lives as long as the loader (across epochs); batches read
    ahead of an abandoned epoch are dropped."""

    def __init__(self, dataset: Dataset, threads: int, ahead: int, pin_memory: bool):
        self.dataset, self.ahead, self.pin_memory = dataset, ahead, pin_memory
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="batch-reader")

    def _read(self, indices: list[int]) -> dict:
        with pinned_batches() if self.pin_memory else contextlib.nullcontext():
            return self.dataset.__getitems__(indices)

    def __call__(self, index_lists: Iterable[list[int]]) -> Iterator[dict]:
        pending: deque[Future] = deque()
        try:
            for indices in index_lists:
                pending.append(self.pool.submit(self._read, indices))
                if len(pending) >= self.ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an abandoned epoch: drop what was read ahead
            for future in pending:
                future.cancel()


@gin.configurable
class DistributedBatchLoader:
    """Iterates one rank's collated micro-batches of ``dataset``, epoch after epoch.

    ``for batch in loader`` runs the rest of the current epoch and then moves to the next;
    ``set_epoch(e)`` jumps to the start of epoch e (a no-op if already in epoch e, so a
    resumed run may call it). ``rank``/``world_size`` default to the process group's.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 16,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 8,
        drop_last: bool = True,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
        workers: str = "threads",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if workers not in WORKER_KINDS:
            raise ValueError(f"DistributedBatchLoader.workers={workers!r}; use one of {WORKER_KINDS}")
        self.workers = workers
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = dist.rank() if rank is None else int(rank)
        self.world_size = dist.world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.prefetch_factor = prefetch_factor
        self.sampler = _EpochBatchSampler(
            len(dataset), self.batch_size, self.seed, self.rank, self.world_size, drop_last
        )
        if drop_last and len(self) == 0:
            raise ValueError(
                f"{len(dataset)} samples over {self.world_size} ranks give no full batch of "
                f"{self.batch_size}; lower the batch size or add data"
            )
        self._loader: DataLoader | _ThreadedReader | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.sampler.batches(self.sampler.epoch))

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.sampler.epoch:
            self.sampler.epoch, self.sampler.start = int(epoch), 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.sampler.epoch,
            "batches_done": self.sampler.start,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "dataset_size": len(self.dataset),
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "batch_size", "world_size", "dataset_size"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"cannot resume the data position: {key} was {state[key]} and is now "
                    f"{mine[key]}; the saved position only means the same batch in the same setup"
                )
        if not 0 <= state["batches_done"] <= len(self.sampler.batches(state["epoch"])):
            raise ValueError(f"saved batches_done {state['batches_done']} is outside the epoch")
        self.sampler.epoch, self.sampler.start = int(state["epoch"]), int(state["batches_done"])

    def _batches(self) -> Iterator[dict]:
        if self.workers == "threads" and self.num_workers > 0:
            if self._loader is None:
                ahead = self.num_workers * self.prefetch_factor
                self._loader = _ThreadedReader(self.dataset, self.num_workers, ahead, self.pin_memory)
            return self._loader(self.sampler)
        return iter(self._data_loader())

    def _data_loader(self) -> DataLoader:
        if self._loader is None:
            workers = self.num_workers > 0
            self._loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=identity_collate,
                pin_memory=self.pin_memory,
                worker_init_fn=_seed_worker if workers else None,
                generator=torch.Generator().manual_seed(self.seed + 1000 * self.rank),
                persistent_workers=workers,
                prefetch_factor=self.prefetch_factor if workers else None,
            )
        return self._loader

    def __iter__(self) -> Iterator[dict]:
        if self.sampler.start >= len(self):  # the epoch was consumed without ending the loop
            self.sampler.epoch, self.sampler.start = self.sampler.epoch + 1, 0
        for batch in self._batches():
            self.sampler.start += 1
            yield batch
        self.sampler.epoch, self.sampler.start = self.sampler.epoch + 1, 0
