"""The training mixture: video and audio-text stores, each repeated by an oversampling rate.

The paper mixes VGGSound (repeated 5x for small models, 3x for medium/large) with AudioCaps,
the WavCaps parts (AudioSet-SL, BBC Sound Effects, FreeSound) and Clotho, and samples the
concatenation uniformly. Any subset works: video-only, audio-only, one store.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import gin
import torch
from absl import logging
from torch.utils.data import Dataset

from mmgin.data.datasets import ExtractedDataset, collate_batches
from mmgin.data.statistics import channel_mean_std


@gin.configurable
class DatasetMixture(Dataset):
    """Video sets first, then audio sets; ``oversample`` maps a set's name to its repeat count.

    A set's name is its store directory's stem unless the dataset was given ``name=``.
    Index i of the mixture is a row of one set: the global index space is the concatenation
    of every set repeated ``oversample.get(name, 1)`` times.
    """

    def __init__(
        self,
        video_sets: Sequence[ExtractedDataset] = (),
        audio_sets: Sequence[ExtractedDataset] = (),
        oversample: Mapping[str, int] | None = None,
    ):
        self.video_sets = list(video_sets)
        self.audio_sets = list(audio_sets)
        sets = self.video_sets + self.audio_sets
        if not sets:
            raise ValueError("DatasetMixture needs at least one of video_sets or audio_sets")
        names = [s.name for s in sets]
        oversample = dict(oversample or {})
        unknown = sorted(set(oversample) - set(names))
        if unknown:
            raise ValueError(
                f"DatasetMixture.oversample names {', '.join(unknown)}, which are not in the "
                f"mixture (sets: {', '.join(names)})"
            )
        shapes = {tuple(s.latent_shape) for s in sets}
        if len(shapes) > 1:
            raise ValueError(
                f"the sets' latents differ in shape ({', '.join(f'{s.name}: {s.latent_shape}' for s in sets)}); "
                "mix stores of one mode (16k or 44k) and duration"
            )
        self.parts: list[tuple[ExtractedDataset, int]] = []
        for dataset in sets:
            rate = int(oversample.get(dataset.name, 1))
            if rate < 1:
                raise ValueError(f"oversample rate of {dataset.name} is {rate}; use 1 or more")
            self.parts.append((dataset, rate))
        sizes = [len(d) * rate for d, rate in self.parts]
        self.offsets = torch.tensor([0] + sizes).cumsum(0)
        self.latent_shape = sets[0].latent_shape

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> str:
        total = len(self)
        lines = [f"mixture of {total} samples per epoch:"]
        for dataset, rate in self.parts:
            share = 100.0 * len(dataset) * rate / max(total, 1)
            lines.append(f"  {dataset.name}: {len(dataset)} rows x{rate} ({share:.1f}%)")
        return "\n".join(lines)

    def locate(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(part number, row within that part's dataset) of each global index."""
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"mixture index out of range [0, {len(self)})")
        part = torch.searchsorted(self.offsets, indices, right=True) - 1
        sizes = torch.tensor([len(d) for d, _ in self.parts])
        return part, (indices - self.offsets[part]) % sizes[part]

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A collated batch of ``indices`` in that order, one gather per set and feature."""
        part, row = self.locate(torch.as_tensor(list(indices), dtype=torch.int64))
        grouped, position = part.sort(stable=True)
        parts = sorted(set(part.tolist()))
        batches = [self.parts[p][0].__getitems__(row[part == p].tolist()) for p in parts]
        if torch.equal(grouped, part):  # sets already contiguous and in order (sorted indices)
            return collate_batches(batches)
        return collate_batches(batches, position.argsort())

    def bytes_read(self, indices: Sequence[int]) -> int:
        part, row = self.locate(torch.as_tensor(list(indices), dtype=torch.int64))
        total = 0
        for p in sorted(set(part.tolist())):
            total += self.parts[p][0].bytes_read(row[part == p].tolist())
        return total

    def latent_statistics(self, chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and unbiased std of the posterior means, each of shape (C,).

        As the reference, only the first video set counts (VGGSound train); a mixture without
        video sets uses its first audio set instead. Streams over the memmap in chunks.
        """
        source = (self.video_sets or self.audio_sets)[0]
        if not self.video_sets:
            logging.info("no video set in the mixture: latent statistics from %s", source.name)
        return channel_mean_std(source.store.column("mean"), chunk_rows)
