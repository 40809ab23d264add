"""The training data as gin describes it: lists of store paths become a DatasetMixture."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import gin

from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.data.mixture import DatasetMixture


@gin.configurable
def training_mixture(
    video_stores: Sequence[str | Path] = (),
    audio_stores: Sequence[str | Path] = (),
    video_oversample: int = 1,
) -> DatasetMixture:
    """Video stores (each repeated `video_oversample` times per epoch, 5 for small models and 3
    for medium/large in the paper) mixed with audio-text stores, sampled uniformly.

    Audio-only items train with the learnable empty video features. Either list may be empty.
    """
    if isinstance(video_stores, (str, Path)) or isinstance(audio_stores, (str, Path)):
        raise ValueError("training_mixture: give video_stores/audio_stores as lists of store paths")
    videos = [ExtractedVideoDataset(store=path) for path in video_stores]
    audios = [ExtractedAudioDataset(store=path) for path in audio_stores]
    names = [d.name for d in videos + audios]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"training_mixture: several stores are named {', '.join(duplicates)}; store directories "
            "need distinct names"
        )
    return DatasetMixture(videos, audios, oversample={d.name: video_oversample for d in videos})
