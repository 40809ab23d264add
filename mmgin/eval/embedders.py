"""av-benchmark's embedding models, used through the `av_bench` package when it is installed.

av-benchmark (github.com/hkchengrex/av-benchmark) is not on the package index, and its models
(PANNs, VGGish, PaSST, ImageBind, LAION-CLAP, MS-CLAP, Synchformer) are large; mmgin does not
re-implement them. When `av_bench` imports and the weight files it reads from fixed paths are
present, pred caches are extracted with its own `extract()`, so they are exactly what the
benchmark computes. Otherwise every call here raises EmbeddingModelsUnavailable saying which
package or file is missing and where to put it; the metrics computable from existing caches
are still computed (mmgin.eval.benchmark).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mmgin import io

AV_BENCH_INSTALL = (
    "git clone https://github.com/hkchengrex/av-benchmark && pip install -e av-benchmark "
    "(it pulls its forks of LAION-CLAP, MS-CLAP, PaSST and ImageBind)"
)


class EmbeddingModelsUnavailable(RuntimeError):
    """av-benchmark or one of its weight files is missing; the message says which and where."""


@dataclass(frozen=True)
class AvBenchWeight:
    """A weight file av_bench loads from a fixed path (and would otherwise try to download)."""

    path: Path
    url: str
    used_for: str


def av_bench_weights() -> list[AvBenchWeight]:
    """The files av_bench reads from fixed places under the home directory.

    av_bench downloads these itself when they are missing; mmgin refuses instead, so that an
    evaluation never downloads behind the user's back. (PaSST, VGGish, ImageBind and MS-CLAP
    weights are fetched by their own libraries into the torch hub / Hugging Face caches on
    first use; run one av-benchmark evaluation online, or copy those caches, beforehand.)
    """
    weights = Path.home() / ".cache" / "av-benchmark" / "weights"
    panns = Path.home() / ".cache" / "audioldm_eval" / "ckpt"
    return [
        AvBenchWeight(weights / "synchformer_state_dict.pth",
                      "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/synchformer_state_dict.pth",
                      "Synchformer (DeSync)"),
        AvBenchWeight(weights / "music_speech_audioset_epoch_15_esc_89.98.pt",
                      "https://huggingface.co/lukewys/laion_clap/resolve/main/music_speech_audioset_epoch_15_esc_89.98.pt",
                      "LAION-CLAP"),
        AvBenchWeight(panns / "Cnn14_16k_mAP=0.438.pth",
                      "https://zenodo.org/records/3987831/files/Cnn14_16k_mAP=0.438.pth",
                      "PANNs Cnn14 16 kHz"),
        AvBenchWeight(panns / "Cnn14_mAP=0.431.pth",
                      "https://zenodo.org/records/3576403/files/Cnn14_mAP=0.431.pth",
                      "PANNs Cnn14 32 kHz (av_bench downloads both when this one is missing)"),
    ]


def av_bench_unavailable_reason(needed: tuple[str, ...] | None = None) -> str | None:
    """None when av_bench imports and its weights are in place, else what is missing and where.

    `needed` limits the weight check to files whose `used_for` starts with one of its entries.
    """
    try:
        importlib.import_module("av_bench")
    except ImportError as e:
        return f"the av_bench package is not importable ({e}); install it with: {AV_BENCH_INSTALL}"
    missing = [w for w in av_bench_weights()
               if not w.path.is_file() and (needed is None or w.used_for.startswith(needed))]
    if missing:
        return "av_bench weight files are missing: " + "; ".join(
            f"{w.path} ({w.used_for}; download {w.url})" for w in missing
        )
    return None


def _require(needed: tuple[str, ...] | None = None) -> None:
    reason = av_bench_unavailable_reason(needed)
    if reason is not None:
        raise EmbeddingModelsUnavailable(reason)


def extract_audio_cache(
    audio_dir: str | Path,
    cache_dir: str | Path,
    *,
    audio_length: float = 8.0,
    batch_size: int = 32,
    device: str | torch.device = "cuda",
    skip_video_related: bool = False,
    skip_clap: bool = False,
) -> None:
    """Writes av-benchmark's audio caches for every .flac/.wav in `audio_dir` into `cache_dir`.

    Runs av_bench's own `extract()` (all audio models; the gt side of a benchmark is made the
    same way, usually with skip_video_related and skip_clap).
    """
    _require()
    from av_bench.extract import extract  # pylint: disable=import-outside-toplevel

    extract(audio_path=Path(audio_dir), output_path=Path(cache_dir), audio_length=audio_length,
            batch_size=batch_size, device=str(device), skip_video_related=skip_video_related,
            skip_clap=skip_clap)


def load_sync_head(device: str | torch.device = "cpu") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Synchformer's `compare_v_a` (offset logits of video and audio segment features)."""
    _require(("Synchformer",))
    from av_bench.synchformer.synchformer import Synchformer  # pylint: disable=import-outside-toplevel

    model = Synchformer().to(device).eval()
    weight = next(w for w in av_bench_weights() if w.used_for.startswith("Synchformer"))
    model.load_state_dict(io.load_torch(weight.path))
    return model.compare_v_a
