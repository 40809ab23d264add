"""Training datasets over feature stores: one item per clip, batches gathered in one read.

Item contract (what the trainer consumes): ``id`` (str), ``caption`` (str), ``a_mean`` and
``a_std`` [L, C], ``clip_features`` [64, 1024], ``sync_features`` [192, 768], ``text_features``
[77, 1024], ``video_exist`` and ``text_exist`` (bool tensors). Features come in their storage
dtype (bf16 features stay half the bytes through workers, pinned memory and the copy to the
GPU); ``mmgin.train.batches.to_device`` makes every feature float32 on the device, where the
cast is free and exact. Audio-only items carry zero clip/sync features (in the store's feature
dtype) and ``video_exist`` False.

``__getitems__`` returns a whole collated batch in the order asked for (the layout
``default_collate`` gives a list of items: stacked tensors, lists of strings), reading each
feature with one gather in ascending row order instead of per-item Python work. The loader
asks for each batch's indices sorted, so no reordering copy is needed there.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import gin
import torch
from torch.utils.data import Dataset

from mmgin.data.store import TEXT_KEY, FeatureStore, StoreError, batch_tensor
from mmgin.model.sequence import CLIP_DIM, SYNC_DIM, TEXT_DIM, TEXT_SEQ_LEN, SequenceConfig

# The lengths of 8 s clips (CLIP and Synchformer lengths do not depend on the audio mode).
_EIGHT_SECONDS = SequenceConfig.for_mode("16k", 8.0)


def identity_collate(batch):
    """The loader's collate function: `__getitems__` already returns a collated batch."""
    return batch


class ExtractedDataset(Dataset):
    """Common part of the video and audio datasets: opens the store and checks its shapes."""

    kind = ""

    def __init__(
        self,
        store: str | Path | None = None,
        *,
        tsv: str | Path | None = None,
        memmap_dir: str | Path | None = None,
        name: str | None = None,
        latent_seq_len: int | None = None,
        clip_seq_len: int = _EIGHT_SECONDS.clip_seq_len,
        sync_seq_len: int = _EIGHT_SECONDS.sync_seq_len,
        text_seq_len: int = TEXT_SEQ_LEN,
        clip_dim: int = CLIP_DIM,
        sync_dim: int = SYNC_DIM,
        text_dim: int = TEXT_DIM,
    ):
        if (store is None) == (memmap_dir is None):
            raise ValueError(
                f"{type(self).__name__}: give either store=<dir> (its tsv beside it) or "
                "memmap_dir=<dir> with tsv=<file>, not both"
            )
        self.store = FeatureStore(memmap_dir, tsv) if store is None else FeatureStore.open(store)
        self.name = name or self.store.memmap_dir.name  # the full name: `x` and `x.v2` differ
        if self.store.kind != self.kind:
            raise StoreError(
                f"{self.store.memmap_dir} is a {self.store.kind} store; use "
                f"Extracted{self.store.kind.capitalize()}Dataset for it"
            )
        self.clip_shape = (clip_seq_len, clip_dim)
        self.sync_shape = (sync_seq_len, sync_dim)
        expected = {TEXT_KEY: (text_seq_len, text_dim)}
        if self.kind == "video":
            expected.update(clip_features=self.clip_shape, sync_features=self.sync_shape)
        for key, shape in expected.items():
            actual = self.store.shape(key)
            if actual != shape:
                raise StoreError(f"{self.store.memmap_dir}: {key} rows have shape {actual}, expected {shape}")
        self.latent_shape = self.store.shape("mean")
        if latent_seq_len is not None and self.latent_shape[0] != latent_seq_len:
            raise StoreError(
                f"{self.store.memmap_dir}: latents have length {self.latent_shape[0]}, expected "
                f"{latent_seq_len}; was the store extracted for another mode or duration?"
            )

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A collated batch of rows ``indices``, in that order (one gather per feature)."""
        order = torch.as_tensor(list(indices), dtype=torch.int64)
        ascending, position = order.sort(stable=True)
        features = self.store.read(ascending, as_float=False)
        if not torch.equal(ascending, order):
            back = position.argsort()
            features = {k: _reorder(v, back) for k, v in features.items()}
        size = len(order)
        batch = {
            "id": [self.store.ids[i] for i in order.tolist()],
            "caption": [self.store.captions[i] for i in order.tolist()],
            "a_mean": features["mean"],
            "a_std": features["std"],
            "text_features": features[TEXT_KEY],
            "text_exist": torch.ones(size, dtype=torch.bool),
        }
        if self.kind == "video":
            batch["clip_features"] = features["clip_features"]
            batch["sync_features"] = features["sync_features"]
            batch["video_exist"] = torch.ones(size, dtype=torch.bool)
        else:
            zeros_dtype = features[TEXT_KEY].dtype  # what a video store of this layout holds
            batch["clip_features"] = batch_tensor((size,) + self.clip_shape, zeros_dtype).zero_()
            batch["sync_features"] = batch_tensor((size,) + self.sync_shape, zeros_dtype).zero_()
            batch["video_exist"] = torch.zeros(size, dtype=torch.bool)
        return batch

    def bytes_read(self, indices: Sequence[int]) -> int:
        return self.store.bytes_read(torch.as_tensor(sorted(indices), dtype=torch.int64))


@gin.configurable
class ExtractedVideoDataset(ExtractedDataset):
    """A video store (VGGSound-like): audio latents, CLIP and sync features, label text."""

    kind = "video"


@gin.configurable
class ExtractedAudioDataset(ExtractedDataset):
    """An audio-text store (AudioCaps, WavCaps, Clotho): latents and caption text only."""

    kind = "audio"


def collate_batches(batches: Sequence[dict], order: torch.Tensor | None = None) -> dict:
    """Concatenates collated batches (lists joined, tensors concatenated), then, if ``order``
    is given, takes rows ``order`` of the result."""
    if len(batches) == 1:
        out = batches[0]
    else:
        out = {}
        for key, value in batches[0].items():
            if isinstance(value, torch.Tensor):
                parts = [b[key] for b in batches]
                shape = (sum(len(t) for t in parts),) + tuple(value.shape[1:])
                dtype = functools.reduce(torch.promote_types, (t.dtype for t in parts))  # f32 + bf16 stores: f32
                out[key] = torch.cat(parts, out=batch_tensor(shape, dtype))
            else:
                out[key] = [x for b in batches for x in b[key]]
    return out if order is None else {k: _reorder(v, order) for k, v in out.items()}


def _reorder(value, order: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return torch.index_select(value, 0, order, out=batch_tensor(tuple(value.shape), value.dtype))
    return [value[i] for i in order.tolist()]
