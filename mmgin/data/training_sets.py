"""The data as gin describes it: lists of store paths become a DatasetMixture, a store path
(or None) the validation set."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import gin

from mmgin.data.datasets import ExtractedAudioDataset, ExtractedDataset, ExtractedVideoDataset
from mmgin.data.mixture import DatasetMixture
from mmgin.data.store import FeatureStore


@gin.configurable
def training_mixture(
    video_stores: Sequence[str | Path] = (),
    audio_stores: Sequence[str | Path] = (),
    video_oversample: float = 1,
    rates: Mapping[str, float] | None = None,
) -> DatasetMixture:
    """Video stores mixed with audio-text stores, sampled uniformly; either list may be empty.

    `rates` maps store names (their directories' names) to rates, integer repeats or fractions
    (see mmgin.data.mixture); a video store without one gets `video_oversample`, the reference's
    `vgg_oversample_rate` (5 for small models, 3 for medium/large), an audio store 1. Audio-only
    items train with the learnable empty video features.
    """
    if isinstance(video_stores, (str, Path)) or isinstance(audio_stores, (str, Path)):
        raise ValueError("training_mixture: give video_stores/audio_stores as lists of store paths")
    if not video_stores and not audio_stores:
        raise ValueError("training_mixture: no store to train on; set VIDEO_STORES and/or AUDIO_STORES "
                         "(lists of store paths, [] for none)")
    videos = [ExtractedVideoDataset(store=path) for path in video_stores]
    audios = [ExtractedAudioDataset(store=path) for path in audio_stores]
    names = [d.name for d in videos + audios]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"training_mixture: several stores are named {', '.join(duplicates)}; store directories "
            "need distinct names"
        )
    return DatasetMixture(videos, audios, rates={d.name: video_oversample for d in videos} | dict(rates or {}))


@gin.configurable
def validation_dataset(store: str | Path | None = None) -> ExtractedDataset | None:
    """The held-out store of validation loss and samples, video or audio-text (the store says
    which), or None for no validation (`VAL_STORE = None`)."""
    if store is None:
        return None
    if not isinstance(store, (str, Path)):
        raise ValueError(f"validation_dataset.store is {store!r}; give one store path, or None for no validation")
    kind = FeatureStore.open(store).kind
    return (ExtractedVideoDataset if kind == "video" else ExtractedAudioDataset)(store=store)
