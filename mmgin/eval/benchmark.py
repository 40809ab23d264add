"""av-benchmark's `evaluate()`, from a gt and a pred cache directory, with no embedding model.

Each metric is computed when the cache files it needs exist; otherwise it is reported as
unavailable with the reason (which file is missing and which extractor writes it), never as a
number. DeSync also needs Synchformer's sync head, which only av-benchmark provides.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from absl import logging

from mmgin.eval import cache as cache_files
from mmgin.eval import embedders, metrics
from mmgin.eval.cache import FeatureCache
from mmgin.eval.pairing import pair_by_name

FD_METRICS = ("FD-VGG", "FD-PANN", "FD-PASST")
ISC_METRICS = ("ISC-PANNS-mean", "ISC-PANNS-std", "ISC-PASST-mean", "ISC-PASST-std")
PAIRED_METRICS = ("KL-PANNS-softmax", "KL-PASST-softmax", "IB-Score", "DeSync",
                  "LAION-CLAP-Score", "MS-CLAP-Score")
ALL_METRICS = FD_METRICS + PAIRED_METRICS[:2] + ISC_METRICS + PAIRED_METRICS[2:]


@dataclasses.dataclass
class EvaluationResult:
    """Metric values, and for every metric not computed, why."""

    metrics: dict[str, float]
    unavailable: dict[str, str]
    gt_cache: str
    pred_cache: str


class _Unavailable(Exception):
    """A metric that cannot be computed from what exists; the message says why."""


def evaluate_caches(
    gt_cache: str | Path,
    pred_cache: str | Path,
    *,
    is_paired: bool = True,
    skip_video_related: bool = False,
    skip_clap: bool = False,
    clean_sample_names: bool = True,
    device: str | torch.device = "cpu",
) -> EvaluationResult:
    """Every av-benchmark metric computable from the two cache directories.

    Mirrors av-benchmark's `evaluate(gt, pred, is_paired, num_samples=1, skip_video_related,
    skip_clap)`. DeSync loads Synchformer's sync head from av-benchmark when it is installed
    and both synchformer caches exist (mmgin.eval.embedders).
    """
    gt, pred = FeatureCache(gt_cache), FeatureCache(pred_cache)
    if not gt.directory.is_dir():
        raise FileNotFoundError(f"ground-truth cache directory {gt.directory} does not exist")
    values: dict[str, float] = {}
    unavailable: dict[str, str] = {}

    def run(names: tuple[str, ...], compute: Callable[[], tuple[float, ...]]) -> None:
        try:
            for name, value in zip(names, compute()):
                values[name] = float(value)
        except _Unavailable as e:
            for name in names:
                unavailable[name] = str(e)
        except (ValueError, RuntimeError, OSError) as e:
            logging.warning("%s failed: %s", "/".join(names), e)
            for name in names:
                unavailable[name] = f"failed: {e}"

    def need(*files: tuple[FeatureCache, str]) -> None:
        missing = [f"{'gt' if c is gt else 'pred'} cache file {c.path(n)}"
                   f" (written by {cache_files.CACHE_LAYOUTS[n].written_by})"
                   for c, n in files if not c.has(n)]
        if missing:
            raise _Unavailable("missing " + "; ".join(missing))

    def paired(gt_file: str, what: str, pred_file: str | None = None, clean: bool = clean_sample_names):
        """The gt and pred entries paired by name; `pred_file` defaults to the gt's file name."""
        pred_file = pred_file or gt_file
        result = pair_by_name(gt.load(gt_file), pred.load(pred_file), clean_names=clean, what=what)
        if not result.keys:
            raise _Unavailable(f"no key of {pred.path(pred_file)} matches a key of {gt.path(gt_file)}")
        return result

    def fd_vgg():
        need((gt, cache_files.VGGISH), (pred, cache_files.VGGISH))
        return (metrics.frechet_distance(torch.cat(list(pred.load(cache_files.VGGISH).values())),
                                         torch.cat(list(gt.load(cache_files.VGGISH).values()))),)

    def fd_pann():
        need((gt, cache_files.PANN), (pred, cache_files.PANN))
        return (metrics.frechet_distance(_stack(pred.load(cache_files.PANN), "2048"),
                                         _stack(gt.load(cache_files.PANN), "2048")),)

    def fd_passt():
        need((gt, cache_files.PASST_EMBED), (pred, cache_files.PASST_EMBED))
        if is_paired:
            p = paired(cache_files.PASST_EMBED, "PaSST features")
            return (metrics.frechet_distance(torch.stack(p.pred), torch.stack(p.gt)),)
        return (metrics.frechet_distance(_stack(pred.load(cache_files.PASST_EMBED)),
                                         _stack(gt.load(cache_files.PASST_EMBED))),)

    def kl_panns():
        need((gt, cache_files.PANN), (pred, cache_files.PANN))
        p = paired(cache_files.PANN, "PANNs logits (exact names)", clean=False)
        return (metrics.mean_kl_softmax(torch.stack([v["logits"] for v in p.gt]),
                                        torch.stack([v["logits"] for v in p.pred])),)

    def kl_passt():
        need((gt, cache_files.PASST_LOGITS), (pred, cache_files.PASST_LOGITS))
        p = paired(cache_files.PASST_LOGITS, "PaSST logits")
        return (metrics.mean_kl_softmax(torch.stack(p.gt), torch.stack(p.pred)),)

    def isc_panns():
        need((pred, cache_files.PANN))
        return metrics.inception_score(_stack(pred.load(cache_files.PANN), "logits"))

    def isc_passt():
        if is_paired:
            need((gt, cache_files.PASST_LOGITS), (pred, cache_files.PASST_LOGITS))
            return metrics.inception_score(torch.stack(paired(cache_files.PASST_LOGITS, "PaSST logits").pred))
        need((pred, cache_files.PASST_LOGITS))
        return metrics.inception_score(_stack(pred.load(cache_files.PASST_LOGITS)))

    def cosine(gt_file: str, pred_file: str, what: str) -> Callable[[], tuple[float]]:
        def compute():
            need((gt, gt_file), (pred, pred_file))
            p = paired(gt_file, what, pred_file)
            return (metrics.mean_cosine_similarity(torch.stack(p.gt), torch.stack(p.pred)),)
        return compute

    def desync():
        need((gt, cache_files.SYNCHFORMER_VIDEO), (pred, cache_files.SYNCHFORMER_AUDIO))
        try:
            head = embedders.load_sync_head(device)
        except embedders.EmbeddingModelsUnavailable as e:
            raise _Unavailable(str(e)) from e
        p = paired(cache_files.SYNCHFORMER_VIDEO, "Synchformer features", cache_files.SYNCHFORMER_AUDIO)
        with torch.inference_mode():
            return (metrics.desync(head, torch.stack(p.gt), torch.stack(p.pred), device=device),)

    run(("FD-VGG",), fd_vgg)
    run(("FD-PANN",), fd_pann)
    run(("FD-PASST",), fd_passt)
    if is_paired:
        run(("KL-PANNS-softmax",), kl_panns)
        run(("KL-PASST-softmax",), kl_passt)
    run(("ISC-PANNS-mean", "ISC-PANNS-std"), isc_panns)
    run(("ISC-PASST-mean", "ISC-PASST-std"), isc_passt)
    if not is_paired:
        unavailable.update(dict.fromkeys(PAIRED_METRICS, "paired metric; evaluation ran with is_paired=False"))
    elif skip_video_related:
        unavailable.update(dict.fromkeys(("IB-Score", "DeSync"), "skipped (skip_video_related=True)"))
    else:
        run(("IB-Score",), cosine(cache_files.IMAGEBIND_VIDEO, cache_files.IMAGEBIND_AUDIO, "ImageBind features"))
        run(("DeSync",), desync)
    if is_paired and skip_clap:
        unavailable.update(dict.fromkeys(("LAION-CLAP-Score", "MS-CLAP-Score"), "skipped (skip_clap=True)"))
    elif is_paired:
        run(("LAION-CLAP-Score",), cosine(cache_files.CLAP_LAION_TEXT, cache_files.CLAP_LAION_AUDIO,
                                          "LAION-CLAP features"))
        run(("MS-CLAP-Score",), cosine(cache_files.CLAP_MS_TEXT, cache_files.CLAP_MS_AUDIO, "MS-CLAP features"))
    ordered = {name: values[name] for name in ALL_METRICS if name in values}
    missing = {name: unavailable[name] for name in ALL_METRICS if name in unavailable}
    return EvaluationResult(ordered, missing, str(gt.directory), str(pred.directory))


def _stack(entries: dict[str, Any], field: str | None = None) -> torch.Tensor:
    """All values of a cache in its order (one field of each for PANNs)."""
    if not entries:
        raise _Unavailable("cache is empty")
    return torch.stack([v[field] if field else v for v in entries.values()])
