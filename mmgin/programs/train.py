"""The Train program: MMAudio flow-matching training, configured entirely by gin.

    torchrun --standalone --nproc_per_node=8 launch.py --gin_file=gin/large_44k.gin \\
        --gin_param="VIDEO_STORES = ['/data/vgg-train']" ...

The loop runs the step and, between steps, each component that is due (progress log, EMA
snapshot, validation, sampling, checkpoint). mmgin/train/README.md: settings, files, tags.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable

import gin
import numpy as np
import torch
from absl import logging
from torch.utils.data import Dataset

from mmgin import dist, preemption
from mmgin.audio import AudioCodec
from mmgin.model import FlowMatching, MMAudio
from mmgin.programs.base import Program
from mmgin.train.batches import MicroBatchSource, accumulation_steps
from mmgin.train.checkpointing import CheckpointConfig, Checkpointing, RunIdentity
from mmgin.train.ema_keeper import EMAConfig, EMAKeeper
from mmgin.train.from_data import check_latent_shapes, set_latent_statistics, set_null_text
from mmgin.train.metrics import PhaseTimes, Writer
from mmgin.train.progress import LogConfig, Progress
from mmgin.train.sampling import Sampling, SamplingConfig
from mmgin.train.trainer import StepConfig, Trainer, torch_settings
from mmgin.train.validation import Validation, ValidationConfig

TENSORBOARD_DIR = "tensorboard"


class _DefaultEMA:
    """Train.ema's default: an EMAConfig() made when Train is, with its gin bindings."""

    def __repr__(self) -> str:
        return "@EMAConfig()"


@gin.configurable
class Train(Program):
    """Trains `network` on `train_dataset` with the paper's recipe by default.

    `network` is bound as a factory (`Train.network = @get_network`) so that it is built after
    seeding, identically on every rank and in every run. `batch_size` is the GLOBAL batch;
    `micro_batch_size` (per GPU) with gradient accumulation keeps it on fewer or smaller GPUs.
    The grouped settings (`step`, `checkpointing`, `ema`, `validation`, `sampling`, `logging`)
    are each one configurable (None: its defaults; `ema = None`: no EMA). A run restarted in the
    same output_dir resumes from its newest usable checkpoint. SIGTERM stops every rank at a step
    boundary with a checkpoint and exit code 0; a second SIGTERM, or none of that within
    `sigterm_grace_seconds`, ends the run at once (mmgin.preemption).
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        network: Callable[[], MMAudio] | MMAudio = gin.REQUIRED,
        train_dataset: Dataset = gin.REQUIRED,
        val_dataset: Dataset | None = None,
        codec: AudioCodec | None = None,
        flow: FlowMatching | None = None,
        batch_size: int = 512,
        micro_batch_size: int | None = None,
        num_iterations: int = 300_000,
        seed: int = 14159265,
        num_workers: int = 10,
        sigterm_grace_seconds: float = preemption.DEFAULT_GRACE_SECONDS,
        step: StepConfig | None = None,
        checkpointing: CheckpointConfig | None = None,
        ema: EMAConfig | None | _DefaultEMA = _DefaultEMA(),
        validation: ValidationConfig | None = None,
        sampling: SamplingConfig | None = None,
        logging: LogConfig | None = None,  # pylint: disable=redefined-outer-name
    ):
        super().__init__(output_dir)
        self.micro_batch_size, self.accumulation = accumulation_steps(batch_size, micro_batch_size, dist.world_size())
        if num_iterations < 1:
            raise ValueError(f"Train.num_iterations must be >= 1, got {num_iterations}")
        if val_dataset is None:
            dist.log_main("Train.val_dataset is None: no validation loss or samples")
        elif codec is None:
            dist.log_main("Train.codec is None: validation samples are not generated")
        self.make_network, self.train_dataset, self.val_dataset, self.codec = network, train_dataset, val_dataset, codec
        self.flow = flow if flow is not None else FlowMatching()
        self.batch_size, self.num_iterations, self.seed = batch_size, num_iterations, seed
        self.num_workers, self.sigterm_grace_seconds = num_workers, sigterm_grace_seconds
        self.step = step or StepConfig()
        self.checkpointing = checkpointing or CheckpointConfig()
        self.ema = EMAConfig() if isinstance(ema, _DefaultEMA) else ema
        self.validation = validation or ValidationConfig()
        self.sampling = sampling or SamplingConfig()
        self.logging = logging or LogConfig()
        self.device = dist.info().device

    def build(self) -> None:
        """The network (seeded: every rank builds the same initial weights, as the reference),
        the step and the components; nothing here reads or writes the output directory."""
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)
        network = self.make_network if isinstance(self.make_network, torch.nn.Module) else self.make_network()
        check_latent_shapes(network, train_dataset=self.train_dataset, val_dataset=self.val_dataset)
        self.network = network.to(self.device).train()
        if self.codec is not None:
            self.codec.to(self.device)
        info = dist.info()
        virtual_ranks = [info.rank * self.accumulation + j for j in range(self.accumulation)]
        self.trainer = Trainer(network, self.flow, self.device, self.step, virtual_ranks=virtual_ranks, seed=self.seed)
        self.source = MicroBatchSource(self.train_dataset, self.micro_batch_size, self.accumulation, info.rank,
                                       info.world_size, self.seed, self.num_workers)
        identity = RunIdentity(self.accumulation, self.seed, self.ema.sigma_rels if self.ema is not None else None)
        n = self.num_iterations
        self.saver = Checkpointing(self.checkpointing, self.output_dir, network, identity, self.source, n)
        self.averager = EMAKeeper(self.ema, self.output_dir) if self.ema is not None else None
        self.validator = self.sampler = None
        if self.val_dataset is not None:
            self.validator = Validation(self.validation, self.val_dataset, self.micro_batch_size, self.seed,
                                        self.num_workers, n)
            if self.codec is not None:
                self.sampler = Sampling(self.sampling, self.output_dir, self.val_dataset, self.codec, n)
        self.progress = Progress(self.logging, self.batch_size, n, self.device)

    def run(self) -> None:
        with torch_settings(self.step, self.device), preemption.sigterm_stops(self.sigterm_grace_seconds) as stop:
            self._start()
            writer = Writer(self.output_dir / TENSORBOARD_DIR)
            try:
                finished = self._train(writer, preemption.StepVote(stop, self.device))
            finally:
                writer.close()
            if finished and self.averager is not None:
                self.averager.finish(self.network)
            dist.barrier()

    def _start(self) -> None:
        """Where the run starts: its checkpoint, or weights and what the data gives a new network;
        then the EMA (copies of those weights) and the trainer's state."""
        resume, reference = self.saver.start()
        set_latent_statistics(self.network, self.train_dataset)
        set_null_text(self.network, self.train_dataset, self.val_dataset)
        if self.averager is not None:
            self.trainer.ema = self.averager.start(self.network, self.saver.run_id)
        self.saver.restore(self.trainer, resume, reference)
        self.progress.start(self.network, self.step.precision)

    def _describe(self, writer: Writer) -> None:
        writer.text("config", "```\n" + gin.operative_config_str() + "\n```")
        describe = getattr(self.train_dataset, "describe", None)
        if describe is not None:  # what the run trains on: rows, rates and shares per store
            mixture = describe()
            dist.log_main("%s", mixture)
            writer.text("data/mixture", "```\n" + mixture + "\n```")
        dist.log_main(
            "training %s: %d iterations, global batch %d = %d ranks x %d micro-steps x %d, %d steps/epoch",
            type(self.network).__name__, self.num_iterations, self.batch_size, dist.world_size(),
            self.accumulation, self.micro_batch_size, self.source.steps_per_epoch(),
        )

    def _components(self) -> list[tuple[str, Any]]:
        """(phase name, component) of what runs between steps, in order; each decides when it
        runs (`due(iteration)`) and runs with `run(trainer, writer)`."""
        named = (("ema_snapshot", self.averager), ("validation", self.validator), ("sampling", self.sampler),
                 ("checkpoint", self.saver))
        return [(name, component) for name, component in named if component is not None]

    def _train(self, writer: Writer, vote: preemption.StepVote) -> bool:
        """Steps until num_iterations (True) or until every rank agreed to stop on SIGTERM (False)."""
        self._describe(writer)
        trainer, components = self.trainer, self._components()
        while trainer.iteration < self.num_iterations:
            micro_batches = self.source.next_step()
            self.progress.throughput.waited(self.source.wait_seconds)
            trainer.train_step(micro_batches)
            self.progress.throughput.step_done()
            it, extra_start, times = trainer.iteration, time.perf_counter(), PhaseTimes()
            if self.progress.due(it):
                self.progress.run(trainer, writer)
            for name, component in components:
                if component.due(it):
                    times.run(name, lambda: component.run(trainer, writer))  # pylint: disable=cell-var-from-loop
            writer.scalars(times.scalars(), it)
            self.progress.throughput.exclude(time.perf_counter() - extra_start)
            if vote.stop_agreed() and it < self.num_iterations:  # every rank stops here, checkpointed
                if "checkpoint" not in times.seconds:
                    self.saver.run(trainer)
                logging.warning("rank %d: stopped by SIGTERM at iteration %d; %s", dist.rank(), it, preemption.RESUME)
                return False
        return True
