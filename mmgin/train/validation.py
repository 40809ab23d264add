"""Validation: the loss on a held-out store, every `ValidationConfig.every` iterations.

It draws from a fresh clone of the initial step generator, so every pass sees the same noise
and the numbers compare across iterations (the reference's eval RNG clone, FACTS §11.6).
"""

from __future__ import annotations

import dataclasses
import time

import gin
import numpy as np
import torch
from torch.utils.data import Dataset

from mmgin import dist
from mmgin.data.loader import DistributedBatchLoader
from mmgin.train.batches import to_device
from mmgin.train.loss import draw_noise, loss_inputs
from mmgin.train.metrics import NUM_T_BINS, LossByT, Writer
from mmgin.train.trainer import Trainer, cadence, require_positive


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """`Train.validation = @ValidationConfig()`: the validation loss `every` iterations (and at
    the last), in batches of `batch_size` per rank (None: Train's micro batch)."""

    every: int = 5000
    batch_size: int | None = None

    def __post_init__(self) -> None:
        require_positive(self, "every", "batch_size")


class Validation:
    """The validation pass of a run and its TensorBoard scalars (`val/loss`, `val/loss_by_t`)."""

    def __init__(self, config: ValidationConfig, dataset: Dataset, micro_batch_size: int, seed: int,
                 num_workers: int, num_iterations: int):
        self.config = config
        self.due = cadence(config.every, num_iterations)
        self.loader = DistributedBatchLoader(
            dataset, batch_size=config.batch_size or micro_batch_size, seed=seed, drop_last=False,
            num_workers=min(2, num_workers),
        )
        self.first = True

    def run(self, trainer: Trainer, writer: Writer) -> None:
        start = time.perf_counter()
        mean, sums, counts = self._loss(trainer)
        it = trainer.iteration
        writer.scalars({"val/loss": mean}, it)
        writer.loss_by_t("val/loss_by_t", sums, counts, it)
        dist.log_main("it %d | val/loss %.5f", it, mean)
        if self.first:  # compiled on first use: paid once per run
            dist.log_main("the first validation pass took %.1f s, compiling it included", time.perf_counter() - start)
            self.first = False

    @torch.no_grad()
    def _loss(self, trainer: Trainer) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss over all ranks, loss-by-t sums, counts) of one pass over the validation set,
        in the same order every pass (the loader rewound to epoch 0: the last pass ended in 1)."""
        network, device, step = trainer.network, trainer.device, trainer.config
        generator = trainer.eval_generators()[0]
        was_training = network.training
        network.eval()
        self.loader.set_epoch(0)
        bins = LossByT(device)
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for cpu_batch in self.loader:
            batch = to_device(cpu_batch, device)
            noise = draw_noise(batch["a_mean"], trainer.flow, generator, step.null_condition_probability,
                               step.independent_video_dropout)
            with trainer.autocast():
                per_sample = trainer.loss_fn(**loss_inputs(batch, noise)).double()
            finite = torch.isfinite(per_sample)
            total[0] += torch.where(finite, per_sample, torch.zeros_like(per_sample)).sum()
            total[1] += finite.sum()
            bins.add(noise.t, per_sample, valid=finite)
        network.train(was_training)
        packed = dist.all_reduce_sum(torch.cat([total, bins.sums, bins.counts]))
        host = packed.cpu().numpy()
        mean = host[0] / host[1] if host[1] > 0 else float("nan")
        return mean, host[2:2 + NUM_T_BINS], host[2 + NUM_T_BINS:]
