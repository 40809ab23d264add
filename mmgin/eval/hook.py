"""In-training evaluation: av-benchmark metrics of a folder of generated validation audio."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gin
import torch
from absl import logging

from mmgin.eval import embedders
from mmgin.eval.benchmark import EvaluationResult, evaluate_caches
from mmgin.eval.report import ScalarWriter, explain_missing_predictions, publish


@gin.configurable
@dataclasses.dataclass
class EvaluationHook:
    """Called by the training loop (rank 0) after it has written validation audio.

    `hook(audio_dir, iteration, writer)` extracts the pred cache into `audio_dir/cache` with
    av-benchmark (when installed; re-instantiating its models each call, as the reference
    does), evaluates it against `gt_cache`, logs `<tag>/<metric>` to `writer`, writes
    `audio_dir/metrics.json` and returns the computed metrics. A missing optional model never
    stops training: it is warned about once and its metrics are listed as unavailable.
    """

    gt_cache: str | Path = gin.REQUIRED
    tag: str = "val"
    audio_length: float = 8.0
    batch_size: int = 32
    device: str = "auto"
    is_paired: bool = True
    skip_video_related: bool = False
    skip_clap: bool = False
    clean_sample_names: bool = True
    extract_features: bool = True
    metrics_filename: str = "metrics.json"
    _warned: set[str] = dataclasses.field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.gt_cache = Path(self.gt_cache).expanduser()
        if not self.gt_cache.is_dir():
            raise FileNotFoundError(
                f"EvaluationHook.gt_cache={self.gt_cache} is not a directory; point it at an "
                "av-benchmark ground-truth cache (see mmgin/eval/README.md)"
            )
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logging.warning("%s evaluation: %s", self.tag, message)

    def extract(self, audio_dir: Path, cache_dir: Path) -> str | None:
        """Extracts the pred cache; returns why it could not, or None."""
        if not self.extract_features:
            return "feature extraction is off (EvaluationHook.extract_features=False)"
        reason = embedders.av_bench_unavailable_reason()
        if reason is not None:
            self._warn_once(f"embedding-based metrics are unavailable: {reason}")
            return reason
        try:
            embedders.extract_audio_cache(
                audio_dir, cache_dir, audio_length=self.audio_length, batch_size=self.batch_size,
                device=self.device, skip_video_related=self.skip_video_related,
                skip_clap=self.skip_clap,
            )
        except Exception as e:  # pylint: disable=broad-except  (never stop training for eval)
            logging.exception("%s evaluation: av-benchmark feature extraction failed", self.tag)
            return f"av-benchmark extraction failed: {type(e).__name__}: {e}"
        return None

    def evaluate(self, audio_dir: str | Path) -> EvaluationResult:
        """Extracts `audio_dir/cache` (when av-benchmark is available) and scores it."""
        audio_dir = Path(audio_dir)
        cache_dir = audio_dir / "cache"
        problem = self.extract(audio_dir, cache_dir)
        with torch.autocast(device_type=torch.device(self.device).type, enabled=False):
            result = evaluate_caches(
                self.gt_cache, cache_dir, is_paired=self.is_paired,
                skip_video_related=self.skip_video_related, skip_clap=self.skip_clap,
                clean_sample_names=self.clean_sample_names, device=self.device,
            )
        explain_missing_predictions(result, problem)
        return result

    def __call__(self, audio_dir: str | Path, iteration: int,
                 writer: ScalarWriter | None = None) -> dict[str, float]:
        result = self.evaluate(audio_dir)
        publish(result, tag=self.tag, iteration=iteration, writer=writer,
                json_path=Path(audio_dir) / self.metrics_filename)
        return result.metrics
