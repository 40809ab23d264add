"""The training mixture: video and audio-text stores, each drawn at its own rate per epoch.

The paper mixes VGGSound (repeated 5x for small models, 3x for medium/large: the reference's
``vgg_oversample_rate``) with AudioCaps, the WavCaps parts (AudioSet-SL, BBC Sound Effects,
FreeSound) and Clotho, and samples the concatenation uniformly. Any subset works: video-only,
audio-only, one store.

Rates. A store of n rows at an integer rate k is repeated k times per epoch, as in the
reference: with integer rates the index space is exactly the concatenation of the repeated
stores. A fractional rate (0.5, 2.5, 1.25) is exact over whole passes instead of over a drawn
subset: rates are read as the decimals they are written as, and one epoch holds P passes, P
the smallest count that makes every rate x P whole (P = 2 for 0.5 and 2.5); each row of a store
then appears exactly rate x P times per epoch. So every row of a store is drawn equally often,
each store's share of an epoch is exactly its rate's, and the row behind an index depends on
the index only, so the loader's one permutation per epoch (seed + epoch) and its state_dict
resume apply unchanged. (Drawing a fresh subset per epoch for the fraction would need the
loader to tell the dataset its epoch, which worker processes holding copies would not see; a
fixed subset would favour its rows for the whole run.) P is at most MAX_PASSES, which keeps
the permutation small: rates in steps of 0.05 always fit.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Mapping, Sequence

import gin
import torch
from absl import logging
from torch.utils.data import Dataset

from mmgin.data.datasets import ExtractedDataset, collate_batches
from mmgin.data.statistics import NonFiniteRows, channel_mean_std
from mmgin.data.store import StoreError

MAX_PASSES = 20


def exact_rate(name: str, rate: float) -> Fraction:
    """``rate`` as the decimal it was written as (0.1 is 1/10, not the nearest double)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, Fraction)) or not (
        math.isfinite(rate) and rate > 0
    ):
        raise ValueError(f"the rate of {name} is {rate!r}; use a positive number (e.g. 5, 1, 0.5, 2.5)")
    return Fraction(repr(rate)) if isinstance(rate, float) else Fraction(rate)


@gin.configurable
class DatasetMixture(Dataset):
    """Video sets first, then audio sets; ``rates`` maps a set's name to its rate (default 1).

    A set's name is its store directory's name unless the dataset was given ``name=``. The
    global index space is the concatenation of every set repeated ``repeats`` times (its rate
    times the passes per epoch, see the module docstring); index i is a row of one set.
    """

    def __init__(
        self,
        video_sets: Sequence[ExtractedDataset] = (),
        audio_sets: Sequence[ExtractedDataset] = (),
        rates: Mapping[str, float] | None = None,
    ):
        self.video_sets = list(video_sets)
        self.audio_sets = list(audio_sets)
        sets = self.datasets
        if not sets:
            raise ValueError("DatasetMixture needs at least one of video_sets or audio_sets")
        names = [s.name for s in sets]
        rates = dict(rates or {})
        unknown = sorted(set(rates) - set(names))
        if unknown:
            raise ValueError(
                f"the mixture's rates name {', '.join(unknown)}, which are not in the mixture "
                f"(stores: {', '.join(names)}); a store's name is its directory's name"
            )
        shapes = {tuple(s.latent_shape) for s in sets}
        if len(shapes) > 1:
            raise ValueError(
                f"the sets' latents differ in shape ({', '.join(f'{s.name}: {s.latent_shape}' for s in sets)}); "
                "mix stores of one mode (16k or 44k) and duration"
            )
        self.rates = [exact_rate(name, rates.get(name, 1)) for name in names]
        self.passes = math.lcm(*(rate.denominator for rate in self.rates))
        if self.passes > MAX_PASSES:
            raise ValueError(
                f"the rates ({', '.join(f'{n}: {float(r):g}' for n, r in zip(names, self.rates))}) "
                f"need {self.passes} passes per epoch to be exact, more than {MAX_PASSES}; use rates "
                "in steps of 0.05, or scale them (only their ratios set the shares)"
            )
        self.repeats = [int(rate * self.passes) for rate in self.rates]
        sizes = [len(d) * repeats for d, repeats in zip(sets, self.repeats)]
        self.offsets = torch.tensor([0] + sizes).cumsum(0)
        self.latent_shape = sets[0].latent_shape

    @property
    def datasets(self) -> list[ExtractedDataset]:
        """Every set in mixture order (video sets, then audio sets)."""
        return self.video_sets + self.audio_sets

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def describe(self) -> str:
        """The make-up of an epoch, one line per store: what the run trains on."""
        total = len(self)
        passes = f" ({self.passes} passes: exact for the fractional rates)" if self.passes > 1 else ""
        lines = [f"training mixture: {total} samples per epoch{passes}, drawn uniformly",
                 f"  {'store':<24} {'kind':<5} {'rows':>10} {'rate':>6} {'per epoch':>11} {'share':>7}"]
        for dataset, rate, repeats in zip(self.datasets, self.rates, self.repeats):
            samples = len(dataset) * repeats
            lines.append(f"  {dataset.name:<24} {dataset.kind:<5} {len(dataset):>10} {float(rate):>6g} "
                         f"{samples:>11} {100.0 * samples / max(total, 1):>6.1f}%")
        return "\n".join(lines)

    def locate(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(set number, row within that set) of each global index."""
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"mixture index out of range [0, {len(self)})")
        part = torch.searchsorted(self.offsets, indices, right=True) - 1
        sizes = torch.tensor([len(d) for d in self.datasets])
        return part, (indices - self.offsets[part]) % sizes[part]

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A collated batch of ``indices`` in that order, one gather per set and feature."""
        part, row = self.locate(torch.as_tensor(list(indices), dtype=torch.int64))
        grouped, position = part.sort(stable=True)
        sets = self.datasets
        batches = [sets[p].__getitems__(row[part == p].tolist()) for p in sorted(set(part.tolist()))]
        # Sorted indices need no reordering: their sets come contiguous and in order.
        return collate_batches(batches, None if torch.equal(grouped, part) else position.argsort())

    def bytes_read(self, indices: Sequence[int]) -> int:
        part, row = self.locate(torch.as_tensor(list(indices), dtype=torch.int64))
        return sum(self.datasets[p].bytes_read(row[part == p].tolist()) for p in sorted(set(part.tolist())))

    def latent_statistics(self, chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and unbiased std of the posterior means, each of shape (C,).

        As the reference, only the first video set counts (VGGSound train); a mixture without
        video sets uses its first audio set instead. Streams over the memmap in chunks.

        Rows whose ``mean`` holds a NaN or an infinity are refused (a StoreError naming the
        store, the field and the rows' ids) before training starts: they would make the
        statistics NaN, and every update after them would be skipped.
        """
        source = (self.video_sets or self.audio_sets)[0]
        if not self.video_sets:
            logging.info("no video set in the mixture: latent statistics from %s", source.name)
        try:
            return channel_mean_std(source.store.column("mean"), chunk_rows)
        except NonFiniteRows as bad:
            ids = [source.store.ids[i] for i in bad.rows]
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            raise StoreError(
                f"store {source.store.memmap_dir}: field mean holds NaN or infinite values in {len(ids)} "
                f"row(s) (ids {shown}; rows {bad.rows[:10]}); the latent statistics would be NaN. "
                "Check those rows' media and re-extract the store (overwrite=True)"
            ) from None
