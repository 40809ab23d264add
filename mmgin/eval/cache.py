"""av-benchmark feature caches: one torch.save'd dict per embedding, keyed by file stem.

A cache directory holds up to twelve files (see CACHE_LAYOUTS). Values are CPU float32
tensors, except PANNs, whose value is a dict of three tensors. The dict's insertion order is
part of the data (the inception-score shuffle and the pairing walk follow it), so it is kept
exactly on read and write. Files written here load in av-benchmark and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mmgin import io

PANN = "pann_features.pth"
VGGISH = "vggish_features.pth"
PASST_EMBED = "passt_features_embed.pth"
PASST_LOGITS = "passt_logits.pth"
IMAGEBIND_AUDIO = "imagebind_audio.pth"
IMAGEBIND_VIDEO = "imagebind_video.pth"
SYNCHFORMER_AUDIO = "synchformer_audio.pth"
SYNCHFORMER_VIDEO = "synchformer_video.pth"
CLAP_LAION_AUDIO = "clap_laion_audio.pth"
CLAP_LAION_TEXT = "clap_laion_text.pth"
CLAP_MS_AUDIO = "clap_ms_audio.pth"
CLAP_MS_TEXT = "clap_ms_text.pth"

PANN_FIELDS = {"logits": (527,), "2048": (2048,), "clipwise_output": (527,)}


@dataclass(frozen=True)
class CacheLayout:
    """What one cache file holds per key. `shape` uses None for a free dimension."""

    shape: tuple[int | None, ...]
    written_by: str


CACHE_LAYOUTS: dict[str, CacheLayout] = {
    PANN: CacheLayout((), "av-benchmark extract.py (PANNs Cnn14 16 kHz): dict logits/2048/clipwise_output"),
    VGGISH: CacheLayout((None, 128), "av-benchmark extract.py (VGGish, one row per 0.96 s)"),
    PASST_EMBED: CacheLayout((768,), "av-benchmark extract.py (PaSST embedding)"),
    PASST_LOGITS: CacheLayout((527,), "av-benchmark extract.py (PaSST logits)"),
    IMAGEBIND_AUDIO: CacheLayout((1024,), "av-benchmark extract.py (ImageBind audio)"),
    IMAGEBIND_VIDEO: CacheLayout((1024,), "av-benchmark extract_video.py (ImageBind vision)"),
    SYNCHFORMER_AUDIO: CacheLayout((None, 8, 768), "av-benchmark extract.py (Synchformer audio)"),
    SYNCHFORMER_VIDEO: CacheLayout((None, 8, 768), "av-benchmark extract_video.py (Synchformer video)"),
    CLAP_LAION_AUDIO: CacheLayout((512,), "av-benchmark extract.py (LAION-CLAP audio)"),
    CLAP_LAION_TEXT: CacheLayout((512,), "av-benchmark extract_text.py (LAION-CLAP text)"),
    CLAP_MS_AUDIO: CacheLayout((1024,), "av-benchmark extract.py (MS-CLAP audio)"),
    CLAP_MS_TEXT: CacheLayout((1024,), "av-benchmark extract_text.py (MS-CLAP text)"),
}


class CacheFormatError(ValueError):
    """A cache file that is not av-benchmark's layout."""


def _check_tensor(path: Path, key: str, value: Any, shape: tuple[int | None, ...]) -> None:
    if not isinstance(value, torch.Tensor):
        raise CacheFormatError(f"{path}: entry {key!r} is {type(value).__name__}, not a tensor")
    if len(value.shape) != len(shape) or any(
        want is not None and got != want for got, want in zip(value.shape, shape)
    ):
        want = "x".join("n" if d is None else str(d) for d in shape)
        raise CacheFormatError(
            f"{path}: entry {key!r} has shape {tuple(value.shape)}, expected [{want}] "
            f"({CACHE_LAYOUTS[path.name].written_by})"
        )


def validate(path: str | Path, entries: Mapping[str, Any]) -> None:
    """Raises CacheFormatError unless `entries` has the layout of the cache file `path`."""
    path = Path(path)
    if path.name not in CACHE_LAYOUTS:
        raise CacheFormatError(f"{path}: unknown cache file; expected one of {sorted(CACHE_LAYOUTS)}")
    if not isinstance(entries, Mapping):
        raise CacheFormatError(f"{path}: holds {type(entries).__name__}, expected a dict")
    for key, value in entries.items():
        if not isinstance(key, str):
            raise CacheFormatError(f"{path}: key {key!r} is not a string (file stem)")
        if path.name == PANN:
            if not isinstance(value, Mapping) or not {"logits", "2048"} <= set(value):
                raise CacheFormatError(
                    f"{path}: entry {key!r} must be a dict with 'logits' and '2048' tensors"
                )
            for field_name, field_value in value.items():
                _check_tensor(path, f"{key}/{field_name}", field_value, PANN_FIELDS.get(field_name, (None,)))
        else:
            _check_tensor(path, key, value, CACHE_LAYOUTS[path.name].shape)


def read_cache(path: str | Path) -> dict[str, Any]:
    """Loads one cache file (weights_only), checking its layout."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cache file {path} does not exist")
    entries = io.load_torch(path)
    validate(path, entries)
    return entries


def write_cache(path: str | Path, entries: Mapping[str, Any]) -> None:
    """Writes one cache file atomically, in `entries`' order, as contiguous CPU tensors."""
    validate(path, entries)

    def compact(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: compact(v) for k, v in value.items()}
        return value.detach().to("cpu").contiguous().clone()

    io.save_torch({key: compact(value) for key, value in entries.items()}, path)


class FeatureCache:
    """A cache directory; files are read on first use and kept."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._loaded: dict[str, dict[str, Any]] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def load(self, name: str) -> dict[str, Any]:
        if name not in self._loaded:
            self._loaded[name] = read_cache(self.path(name))
        return self._loaded[name]

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r})"
