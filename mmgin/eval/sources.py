"""What to generate audio for: the items of a feature store, a folder of videos, or captions.

Each source lists item ids and turns a list of item indices into conditioning features
(mmgin.model.sampling.Conditions). A bad video is skipped and reported, never fatal.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from absl import logging

from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.data.store import FeatureStore
from mmgin.io import safe_file_name
from mmgin.media.errors import MediaError
from mmgin.media.video import load_video_frames
from mmgin.model import SequenceConfig
from mmgin.model.sampling import Conditions
from mmgin.model.sequence import CLIP_FPS, SYNC_FPS

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi")


@dataclass
class Failure:
    id: str
    path: str
    reason: str
    message: str


@dataclass
class Prepared:
    """The usable items of one batch (their indices), their conditions, and the items skipped."""

    indices: list[int]
    conditions: Conditions | None
    failures: list[Failure] = field(default_factory=list)


class ConditionSource(Protocol):
    ids: list[str]

    def prepare(self, indices: list[int]) -> Prepared: ...

    def source_video(self, item_id: str) -> Path | None: ...


def find_video(directory: Path | None, item_id: str) -> Path | None:
    """`<directory>/<id>.<video suffix>`, or None. An id that is not a plain file name (a path,
    '..') is looked up by its escaped name, so it never reads outside `directory`."""
    if directory is None:
        return None
    for suffix in VIDEO_SUFFIXES:
        candidate = directory / f"{safe_file_name(item_id)}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class StoreSource:
    """Items of an extracted feature store (video or audio-text), with their stored features.

    `source_videos` is the folder of the store's original videos (`<id>.mp4`), used to mux
    the generated audio back into them.
    """

    def __init__(self, store: str | Path, seq: SequenceConfig, source_videos: str | Path | None = None):
        kind = FeatureStore.open(store).kind
        dataset_class = ExtractedVideoDataset if kind == "video" else ExtractedAudioDataset
        self.dataset = dataset_class(store, latent_seq_len=seq.latent_seq_len,
                                     clip_seq_len=seq.clip_seq_len, sync_seq_len=seq.sync_seq_len)
        self.ids = list(self.dataset.store.ids)
        self.source_videos = Path(source_videos) if source_videos else None

    def prepare(self, indices: list[int]) -> Prepared:
        return Prepared(list(indices), Conditions.from_batch(self.dataset.__getitems__(indices)))

    def source_video(self, item_id: str) -> Path | None:
        return find_video(self.source_videos, item_id)


def read_captions(path: str | Path) -> dict[str, str]:
    """av-benchmark's caption csv: a header row with `name` and `caption` columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions csv {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"name", "caption"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with 'name' and 'caption' columns, "
                             f"found {reader.fieldnames}")
        captions = {}
        for line, row in enumerate(reader, start=2):
            if not row["name"]:
                raise ValueError(f"{path}:{line}: empty name")
            captions[row["name"]] = row["caption"] or ""
    return captions


class _TextEncoder(Protocol):
    def encode_text(self, captions: list[str]) -> torch.Tensor: ...


class CaptionSource:
    """Text-to-audio: one item per caption row; video conditions are the empty features."""

    def __init__(self, captions_csv: str | Path, clip_encoder: Callable[[], _TextEncoder]):
        self.captions = read_captions(captions_csv)
        self.ids = list(self.captions)
        self._clip_factory = clip_encoder

    @functools.cached_property
    def clip(self) -> _TextEncoder:
        return self._clip_factory()

    def prepare(self, indices: list[int]) -> Prepared:
        text = self.clip.encode_text([self.captions[self.ids[i]] for i in indices])
        size = len(indices)
        conditions = Conditions(None, None, text, torch.zeros(size, dtype=torch.bool),
                                torch.ones(size, dtype=torch.bool))
        return Prepared(list(indices), conditions)

    def source_video(self, item_id: str) -> Path | None:
        return None


class VideoFolderSource:
    """Video-to-audio on raw videos: CLIP and Synchformer features computed here.

    Captions (optional, `name` → caption) condition the matching videos; the others get the
    empty text feature.
    """

    def __init__(
        self,
        video_dir: str | Path,
        seq: SequenceConfig,
        clip_encoder: Callable[[], torch.nn.Module],
        sync_encoder: Callable[[], torch.nn.Module],
        captions: dict[str, str] | None = None,
        device: torch.device | str = "cpu",
    ):
        self.video_dir = Path(video_dir)
        if not self.video_dir.is_dir():
            raise FileNotFoundError(f"video folder {self.video_dir} does not exist")
        self.paths = sorted(p for p in self.video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {self.video_dir}")
        self.ids = [p.stem for p in self.paths]
        self.seq = seq
        self.captions = captions or {}
        self.device = torch.device(device)
        self._factories = (clip_encoder, sync_encoder)

    @functools.cached_property
    def _encoders(self) -> tuple[torch.nn.Module, ...]:
        return tuple(factory().to(self.device) for factory in self._factories)

    def prepare(self, indices: list[int]) -> Prepared:
        kept, ids, clips, syncs, failures = [], [], [], [], []
        for i in indices:
            path = self.paths[i]
            try:
                clip, sync = load_video_frames(
                    path, clip_fps=CLIP_FPS, clip_frames=self.seq.clip_seq_len,
                    sync_fps=SYNC_FPS, sync_frames=int(self.seq.duration * SYNC_FPS),
                )
            except MediaError as e:
                logging.warning("skipping %s: %s", path, e)
                failures.append(Failure(self.ids[i], str(path), e.reason, str(e)))
                continue
            kept.append(i)
            ids.append(self.ids[i])
            clips.append(clip)
            syncs.append(sync)
        if not ids:
            return Prepared([], None, failures)
        clip_model, sync_model = self._encoders
        with torch.inference_mode():
            clip_f = clip_model.encode_frames(torch.stack(clips).to(self.device))
            sync_f = sync_model(torch.stack(syncs).to(self.device))
            captioned = [name in self.captions for name in ids]
            text_f = (clip_model.encode_text([self.captions.get(name, "") for name in ids])
                      if any(captioned) else None)
        conditions = Conditions(clip_f, sync_f, text_f, torch.ones(len(ids), dtype=torch.bool),
                                torch.tensor(captioned, dtype=torch.bool))
        return Prepared(kept, conditions, failures)

    def source_video(self, item_id: str) -> Path | None:
        return find_video(self.video_dir, item_id)
