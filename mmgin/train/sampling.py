"""Samples during training: audio generated for the validation items, for listening and metrics.

Every `SamplingConfig.every` iterations each rank generates its share of the items with the
online weights (noise from a fresh clone of the initial step generator: the same every pass),
writes `samples/<it>/<id>.flac`, shows the first few in TensorBoard beside their ground truth,
and rank 0 runs the evaluation hook on the folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import gin
import torch
from torch.utils.data import Dataset

from mmgin import dist, io
from mmgin.audio import AudioCodec
from mmgin.media.write import write_audio
from mmgin.model.sampling import Conditions, generate_audio
from mmgin.train.batches import to_device
from mmgin.train.metrics import Writer
from mmgin.train.spectrogram import spectrogram_image
from mmgin.train.trainer import Trainer, cadence, require_positive

SAMPLES_DIR = "samples"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """`Train.sampling = @SamplingConfig()`: `num_samples` validation items (None: all) generated
    `every` iterations (and at the last) in batches of `batch_size`, with `cfg_strength`; the
    first `tensorboard_samples` shown in TensorBoard; `eval_hook(audio_dir, iteration,
    summary_writer)` run on rank 0 after each pass."""

    every: int = 20_000
    num_samples: int | None = None
    batch_size: int = 16
    cfg_strength: float = 4.5
    tensorboard_samples: int = 4
    eval_hook: Callable[..., dict[str, float]] | None = None

    def __post_init__(self) -> None:
        require_positive(self, "every", "num_samples", "batch_size")


def shard_indices(count: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This rank's share of items 0..count-1 (strided), in batches."""
    mine = list(range(count))[rank::world_size]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


class Sampling:
    """One sampling pass of a run (`run`)."""

    def __init__(self, config: SamplingConfig, output_dir: Path, dataset: Dataset, codec: AudioCodec,
                 num_iterations: int):
        self.config = config
        self.due = cadence(config.every, num_iterations)
        self.folder = output_dir / SAMPLES_DIR
        self.dataset = dataset
        self.codec = codec

    def run(self, trainer: Trainer, writer: Writer) -> None:
        info, config, network = dist.info(), self.config, trainer.network
        it = trainer.iteration
        audio_dir = self.folder / f"{it:09d}"
        count = len(self.dataset) if config.num_samples is None else min(config.num_samples, len(self.dataset))
        # Ids come from user tables: never a path, and a repeated id must not overwrite a file.
        names = io.distinct_file_names(self.dataset.store.ids[:count])
        generator = trainer.eval_generators()[0]
        network.eval()
        for indices in shard_indices(count, info.rank, info.world_size, config.batch_size):
            batch = to_device(self.dataset.__getitems__(indices), trainer.device)
            audio = generate_audio(network, trainer.flow, self.codec, Conditions.from_batch(batch), generator,
                                   config.cfg_strength, trainer.config.precision)
            for index, waveform in zip(indices, audio):
                write_audio(audio_dir / f"{names[index]}.flac", waveform, self.codec.sampling_rate)
            if info.is_main and indices[0] < config.tensorboard_samples:
                self._show(writer, batch, audio, indices, it, trainer.device)
        network.train()
        dist.barrier()
        if info.is_main and config.eval_hook is not None:
            config.eval_hook(audio_dir, it, writer.summary_writer)
        dist.barrier()

    @torch.no_grad()
    def _show(self, writer: Writer, batch: dict, audio: torch.Tensor, indices: list[int], it: int,
              device: torch.device) -> None:
        """The first items' audio and mel image in TensorBoard, beside their ground truth."""
        shown = [k for k, index in enumerate(indices) if index < self.config.tensorboard_samples]
        truth = self.codec.decode_latent(batch["a_mean"][shown]).float().cpu()
        rate = self.codec.sampling_rate
        for k, waveform, reference in zip(shown, audio[shown], truth):
            index = indices[k]
            for suffix, wave in (("", waveform), ("_gt", reference)):
                writer.audio(f"sample/{index}/audio{suffix}", wave, rate, it)
                spectrum = self.codec.mel(wave.to(device).unsqueeze(0))[0]
                writer.image(f"sample/{index}/mel{suffix}", spectrogram_image(spectrum), it)
