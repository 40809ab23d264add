"""What a researcher watches: loss binned by t, throughput, MFU, and the TensorBoard writer.

Statistics accumulate on the device between log points; the log point is the only place the
training loop waits for the device.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from mmgin import dist

NUM_T_BINS = 25

# Dense peak tensor throughput (TFLOP/s) per precision, by device name fragment.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
}


def peak_flops(device: torch.device, precision: str, configured_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device: the configured value, else a known GPU's (TF32 for fp32)."""
    if configured_tflops is not None:
        return configured_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, table in PEAK_TFLOPS.items():
        if fragment in name:
            return table[precision] * 1e12
    return None


class LossByT:
    """Per-sample losses summed into `NUM_T_BINS` bins of t (index floor(25 t)), on the device."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(NUM_T_BINS, dtype=torch.float64, device=device)
        self.counts = torch.zeros(NUM_T_BINS, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, t: torch.Tensor, loss: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Adds per-sample `loss` at times `t`; samples where `valid` is False are left out."""
        index = (t.detach() * NUM_T_BINS).long().clamp_(0, NUM_T_BINS - 1)
        loss = loss.detach().double()
        if valid is None:
            valid = torch.ones_like(loss, dtype=torch.bool)
        self.sums.index_add_(0, index, torch.where(valid, loss, torch.zeros_like(loss)))
        self.counts.index_add_(0, index, valid.double())

    def reset(self) -> None:
        self.sums.zero_()
        self.counts.zero_()


class Writer:
    """A SummaryWriter on rank 0; on other ranks every call does nothing."""

    def __init__(self, log_dir: str | Path):
        self.summary_writer = SummaryWriter(str(log_dir)) if dist.is_main() else None

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.summary_writer is not None:
            for tag, value in values.items():
                self.summary_writer.add_scalar(tag, value, step)

    def loss_by_t(self, tag: str, sums: np.ndarray, counts: np.ndarray, step: int) -> None:
        """The mean loss per t bin, drawn as a histogram over t in [0, 1] (empty bins are 0)."""
        if self.summary_writer is None or counts.sum() == 0:
            return
        means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        edges = np.linspace(0, 1, NUM_T_BINS + 1)
        self.summary_writer.add_histogram_raw(
            tag, min=0.0, max=1.0, num=float(counts.sum()), sum=float((means * counts).sum()),
            sum_squares=float((means ** 2 * counts).sum()), bucket_limits=edges[1:].tolist(),
            bucket_counts=means.tolist(), global_step=step,
        )

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.summary_writer is not None:
            self.summary_writer.add_text(tag, text, step)

    def audio(self, tag: str, waveform: torch.Tensor, sample_rate: int, step: int) -> None:
        if self.summary_writer is not None:
            self.summary_writer.add_audio(tag, waveform.detach().float().cpu().clamp(-1, 1), step,
                                   sample_rate=sample_rate)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.summary_writer is not None:
            self.summary_writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if self.summary_writer is not None:
            self.summary_writer.close()


class Throughput:
    """Wall time between log points and the part of it spent waiting for data."""

    def __init__(self) -> None:
        self.window_start = time.perf_counter()
        self.data_wait = 0.0
        self.excluded = 0.0
        self.iterations = 0

    def exclude(self, seconds: float) -> None:
        """Time spent on validation, sampling or checkpoints: not part of the step time."""
        self.excluded += seconds

    def waited(self, seconds: float) -> None:
        self.data_wait += seconds

    def step_done(self) -> None:
        self.iterations += 1

    def window(self) -> tuple[float, float, int]:
        """(training seconds, data wait seconds, iterations) since the last call; restarts."""
        now = time.perf_counter()
        result = (now - self.window_start - self.excluded, self.data_wait, self.iterations)
        self.window_start, self.data_wait, self.excluded, self.iterations = now, 0.0, 0.0, 0
        return result


class PhaseTimes:
    """Wall seconds of the phases run between two training steps (validation, checkpoint, ...),
    each its own TensorBoard scalar, so the step time counts training alone."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, phase: Callable[[], object]) -> None:
        start = time.perf_counter()
        phase()
        self.seconds[name] = time.perf_counter() - start

    def scalars(self) -> dict[str, float]:
        return {f"time/{name}_s": seconds for name, seconds in self.seconds.items()}


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
