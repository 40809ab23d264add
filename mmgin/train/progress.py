"""Train's progress log: the training window's scalars and log line every `LogConfig.every`
iterations, and the stop after too many non-finite updates in a row.

Time spent outside the step (logging, validation, sampling, snapshots, checkpoints) is left
out of the window (`exclude`), so train/samples_per_s and train/mfu count training alone.
"""

from __future__ import annotations

import dataclasses

import gin
import torch

from mmgin import dist
from mmgin.model import MMAudio
from mmgin.model.flops import training_flops_per_sample
from mmgin.train.metrics import Throughput, Writer, format_duration, peak_flops
from mmgin.train.trainer import NonFiniteError, Trainer, cadence, require_positive


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LogConfig:
    """`Train.logging = @LogConfig()`: a log point `every` iterations (and at the last);
    `peak_tflops` per GPU for train/mfu where the GPU's peak is not known (None: known ones only)."""

    every: int = 200
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        require_positive(self, "every")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"LogConfig.peak_tflops must be > 0, got {self.peak_tflops}")


class Progress:
    """The log points of a run: window statistics to TensorBoard and the log, and the limit
    on consecutive skipped updates (`StepConfig.max_consecutive_skips`)."""

    def __init__(self, config: LogConfig, batch_size: int, num_iterations: int, device: torch.device):
        self.config = config
        self.due = cadence(config.every, num_iterations)
        self.batch_size = batch_size
        self.num_iterations = num_iterations
        self.device = device
        self.throughput = Throughput()
        self.flops_per_sample: float | None = None
        self.peak: float | None = None

    def start(self, network: MMAudio, precision: str) -> None:
        """Model FLOPs per sample (rank 0) and the device's peak, for MFU; the window starts now."""
        self.flops_per_sample = training_flops_per_sample(network) if dist.is_main() else None
        self.peak = peak_flops(self.device, precision, self.config.peak_tflops)
        self.throughput = Throughput()

    def run(self, trainer: Trainer, writer: Writer) -> None:
        it = trainer.iteration
        window = trainer.collect_window()
        seconds, data_wait, steps = self.throughput.window()
        step_time = seconds / max(steps, 1)
        samples_per_s = self.batch_size * steps / seconds if seconds > 0 else 0.0
        scalars = {
            "train/loss": window["loss"],
            "train/lr": trainer.learning_rate,
            "train/grad_norm": window["grad_norm"],
            "train/samples_per_s": samples_per_s,
            "train/step_time": step_time,
            "train/data_wait_fraction": data_wait / seconds if seconds > 0 else 0.0,
            "train/skipped_updates": window["skipped_updates"],
        }
        if self.device.type == "cuda":
            scalars["train/gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.flops_per_sample is not None and self.peak is not None:
            scalars["train/mfu"] = self.flops_per_sample * samples_per_s / (self.peak * dist.world_size())
        writer.scalars(scalars, it)
        writer.loss_by_t("train/loss_by_t", window["loss_by_t_sums"], window["loss_by_t_counts"], it)
        mfu = f" | MFU {100 * scalars['train/mfu']:.1f}%" if "train/mfu" in scalars else ""
        dist.log_main(
            "it %d/%d | loss %.5f | lr %.3g | grad_norm %.4f | %.1f samples/s | %.3f s/it | "
            "data %.0f%%%s | skipped %d | ETA %s",
            it, self.num_iterations, window["loss"], scalars["train/lr"], window["grad_norm"],
            samples_per_s, step_time, 100 * scalars["train/data_wait_fraction"], mfu,
            int(window["skipped_updates"]), format_duration((self.num_iterations - it) * step_time),
        )
        limit = trainer.config.max_consecutive_skips
        if window["max_consecutive_skips"] >= limit:
            raise NonFiniteError(
                f"{int(window['max_consecutive_skips'])} updates in a row were skipped because the loss or "
                f"gradients were not finite (limit StepConfig.max_consecutive_skips={limit}); check the data for "
                "NaN/inf, or lower the learning rate (adamw.learning_rate; a resumed run applies it from its "
                "checkpoint's iteration) and run the same command again: it resumes from the newest checkpoint"
            )
