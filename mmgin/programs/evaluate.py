"""Evaluate: generate audio with a trained network, write flac (and mp4) files, score them.

    python launch.py --gin_file=gin/evaluate_16k.gin --gin_param="WEIGHTS='mmaudio_small_16k.pth'" \
        --gin_param="OUTPUT_DIR='output/eval'" --gin_param="Evaluate.store='data/vgg-test'"
    torchrun --standalone --nproc_per_node=8 launch.py --gin_file=gin/evaluate_44k.gin ...
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import gin
import torch
from absl import logging
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mmgin import dist, io, preemption
from mmgin.eval import benchmark, embedders
from mmgin.eval.benchmark import EvaluationResult
from mmgin.eval.generate import DEFAULT_CFG_STRENGTH, generate_latents
from mmgin.eval.hook import EvaluationHook
from mmgin.eval.mux import mux_video_with_audio
from mmgin.eval.report import publish
from mmgin.eval.sources import (CaptionSource, ConditionSource, Failure, StoreSource,
                                VideoFolderSource, read_captions)
from mmgin.media.errors import MediaError
from mmgin.media.write import write_audio
from mmgin.model import FlowMatching, MMAudio, SequenceConfig, network_kwargs
from mmgin.model.network import VARIANTS
from mmgin.programs.base import Program
from mmgin.train import checkpoint as ckpt
from mmgin.weights import MissingWeightsError, resolve as resolve_weights

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "none": None}


def load_network_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """Network tensors and the training iteration (None if unknown) from any weights file.

    Accepts a released file or a synthesized EMA (a bare state dict), or a training checkpoint
    (mmgin's online `network` weights, or the reference's <exp>_ckpt_last.pth `weights`). `path` is found by `mmgin.weights.resolve`.
    """
    try:
        path = resolve_weights(path)
    except MissingWeightsError as missing:
        raise MissingWeightsError(
            f"Evaluate.weights={path} does not exist: give a released mmaudio_<name>.pth, an EMA "
            f"file written by SynthesizeEMA, or a training checkpoint (checkpoints/ckpt_*.pth).\n{missing}"
        ) from None
    found = ckpt.weights_in(io.load_torch(path))
    if found is not None:
        return found
    raise ValueError(
        f"Evaluate.weights={path} is neither a network state dict (released / EMA format) nor an "
        "mmgin training checkpoint (a dict with 'network' and 'iteration')"
    )


def build_network(name: str, weights: str | Path, duration: float, device: torch.device
                  ) -> tuple[MMAudio, int | None]:
    """The network `name` holding `weights`, in eval mode on `device`."""
    state, iteration = load_network_weights(weights)
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:  # e.g. a network saved before any statistics or null text were set: it would give NaN
        raise ValueError(
            f"Evaluate.weights={weights} holds non-finite values in {', '.join(bad[:5])}: it is not a "
            "trained network (give ema_final.pth, a training checkpoint or a released file)"
        )
    with torch.device("meta"):
        network = MMAudio(**network_kwargs(name, duration))
    try:
        network.load_weights(state, assign=True)
    except RuntimeError as e:
        raise ValueError(f"Evaluate.weights={weights} does not fit network {name!r}: {e}") from e
    return network.to(device).eval().requires_grad_(False), iteration


@gin.configurable
class Evaluate(Program):
    """Generates audio for one input set, writes it, and computes av-benchmark metrics.

    Inputs (give exactly one of `store`, `video_dir`, `captions_csv`; `captions_csv` with
    `video_dir` adds text prompts to the videos):
    - `store`: an extracted feature store (video or audio-text); `source_videos` is the folder
      of its original videos, for the muxed mp4s;
    - `video_dir`: raw videos, conditioned through the CLIP and Synchformer encoders;
    - `captions_csv`: text-to-audio from av-benchmark's csv (`name`, `caption`).

    Outputs in `output_dir`: `<tag>-sampled/<id>.flac`, `<tag>-sampled-videos/<id>.mp4`
    (the source frames with the generated audio, first `duration` s; for `videos_per_batch`
    items of each batch, all when None), `metrics.json` and TensorBoard scalars `<tag>/<metric>`.
    A repeated id's later items are `<id>-1`, `<id>-2`, ... (mmgin.io.distinct_file_names).
    Metrics need `gt_cache` (an av-benchmark ground-truth cache dir); pred caches are
    extracted into `<tag>-sampled/cache` when av-benchmark is installed.

    Under torchrun each rank generates a strided shard of the items with its own generator
    (seeded `seed + rank`); rank 0 computes the metrics. SIGTERM stops every rank after its
    current batch, keeping the files written, without metrics (mmgin.preemption).
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        network: str = gin.REQUIRED,
        weights: str | Path = gin.REQUIRED,
        codec: Callable[..., torch.nn.Module] = gin.REQUIRED,
        store: str | Path | None = None,
        source_videos: str | Path | None = None,
        video_dir: str | Path | None = None,
        captions_csv: str | Path | None = None,
        clip_encoder: Callable[[], torch.nn.Module] | None = None,
        sync_encoder: Callable[[], torch.nn.Module] | None = None,
        flow: FlowMatching | None = None,
        cfg_strength: float = DEFAULT_CFG_STRENGTH,
        batch_size: int = 16,
        seed: int = 42,
        duration: float = 8.0,
        limit: int | None = None,
        gt_cache: str | Path | None = None,
        tag: str = "test",
        write_videos: bool = True,
        videos_per_batch: int | None = None,
        autocast: str = "bfloat16",
        sigterm_grace_seconds: float = preemption.DEFAULT_GRACE_SECONDS,
    ):
        super().__init__(output_dir)
        if network not in VARIANTS:
            raise ValueError(f"Evaluate.network={network!r}; expected one of {sorted(VARIANTS)}")
        inputs = {"store": store, "video_dir": video_dir, "captions_csv": captions_csv}
        given = [k for k, v in inputs.items() if v]
        if not given or (len(given) > 1 and set(given) != {"video_dir", "captions_csv"}):
            raise ValueError(
                f"Evaluate needs exactly one input among store, video_dir, captions_csv "
                f"(captions_csv may accompany video_dir); got {given or 'none'}"
            )
        for name in ("store", "video_dir", "captions_csv", "source_videos", "gt_cache"):
            value = {**inputs, "source_videos": source_videos, "gt_cache": gt_cache}[name]
            if value and not Path(value).exists():
                raise FileNotFoundError(f"Evaluate.{name}={value} does not exist")
        needs_clip = bool(video_dir or captions_csv)
        if needs_clip and clip_encoder is None:
            raise ValueError("Evaluate.clip_encoder is required for video_dir/captions_csv (e.g. @get_clip)")
        if video_dir and sync_encoder is None:
            raise ValueError("Evaluate.sync_encoder is required for video_dir (e.g. @get_synchformer)")
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"Evaluate.autocast={autocast!r}; expected one of {sorted(AUTOCAST_DTYPES)}")
        if batch_size < 1:
            raise ValueError(f"Evaluate.batch_size must be >= 1, got {batch_size}")
        self.network_name = network
        self.weights = Path(weights)
        self.codec_factory = codec
        self.store, self.source_videos = store, source_videos
        self.video_dir, self.captions_csv = video_dir, captions_csv
        self.clip_encoder, self.sync_encoder = clip_encoder, sync_encoder
        self.flow = flow or FlowMatching()
        self.cfg_strength = cfg_strength
        self.batch_size = batch_size
        self.seed = seed
        self.seq = SequenceConfig.for_mode(VARIANTS[network].mode, duration)
        self.limit = limit
        self.gt_cache = Path(gt_cache) if gt_cache else None
        self.tag = tag
        self.write_videos = write_videos
        self.videos_per_batch = videos_per_batch
        self.autocast_dtype = AUTOCAST_DTYPES[autocast]
        self.sigterm_grace_seconds = sigterm_grace_seconds
        self.audio_dir = self.output_dir / f"{tag}-sampled"
        self.video_out_dir = self.output_dir / f"{tag}-sampled-videos"

    # ------------------------------------------------------------------------ inputs
    def _source(self, device: torch.device) -> ConditionSource:
        if self.store:
            return StoreSource(self.store, self.seq, self.source_videos)
        if self.video_dir:
            captions = read_captions(self.captions_csv) if self.captions_csv else None
            return VideoFolderSource(self.video_dir, self.seq, self.clip_encoder, self.sync_encoder,
                                     captions=captions, device=device)
        return CaptionSource(self.captions_csv, lambda: self.clip_encoder().to(device))

    # ------------------------------------------------------------------------- run
    def run(self) -> None:
        with preemption.sigterm_stops(self.sigterm_grace_seconds) as stop:
            self._run(stop)

    def _run(self, stop: preemption.StopRequest) -> None:
        info = dist.info()
        device = info.device
        started = time.time()
        network, iteration = build_network(self.network_name, self.weights, self.seq.duration, device)
        codec = self.codec_factory(with_encoder=False).to(device)
        if codec.sampling_rate != self.seq.sampling_rate:
            raise ValueError(f"Evaluate.codec is {codec.mode} but network {self.network_name} "
                             f"generates {self.seq.mode} latents; bind AudioCodec.mode = '{self.seq.mode}'")
        source = self._source(device)
        if self.write_videos and self.store and not self.source_videos:
            dist.log_main("no Evaluate.source_videos for the store: no mp4s are written")
        count = len(source.ids) if self.limit is None else min(self.limit, len(source.ids))
        names = io.distinct_file_names(source.ids[:count])  # ids from user tables; repeats get their own files
        mine = list(range(info.rank, count, info.world_size))
        generator = torch.Generator(device=device).manual_seed(self.seed + info.rank)
        if info.is_main:
            self.audio_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        dist.log_main("generating %d items (%d per rank) with %s from %s", count, len(mine),
                      self.network_name, self.weights)

        failures: list[Failure] = []
        written, stopped = 0, False
        batches = [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        for indices in tqdm(batches, desc=f"{self.tag} r{info.rank}", disable=not info.is_main):
            if stop.requested:
                stopped = True
                break
            prepared = source.prepare(indices)
            failures.extend(prepared.failures)
            if not prepared.indices:
                continue
            latents = generate_latents(network, self.flow, prepared.conditions, generator,
                                       self.cfg_strength, self.autocast_dtype)
            with torch.inference_mode(), torch.autocast(
                device_type=device.type, dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None and device.type == "cuda",
            ):
                audio = codec.decode_latent(latents).float().cpu()
            for n, (index, wav) in enumerate(zip(prepared.indices, audio)):
                write_audio(self.audio_dir / f"{names[index]}.flac", wav, codec.sampling_rate)
                written += 1
                if self.write_videos and (self.videos_per_batch is None or n < self.videos_per_batch):
                    self._mux(source, source.ids[index], names[index], wav, codec.sampling_rate, failures)
        self.record_config()  # the network, codec and (on the first batch) the encoders are built

        totals = dist.all_gather_objects({"written": written, "failures": [vars(f) for f in failures],
                                          "stopped": stopped})
        if any(t["stopped"] for t in totals):
            dist.warn_main("%s: stopped by SIGTERM after writing %d of %d flac files to %s; no metrics. "
                           "Evaluate does not resume: the same command generates every item again",
                           self.tag, sum(t["written"] for t in totals), count, self.audio_dir)
            return
        # Only rank 0 scores; the others leave now instead of waiting in a collective that
        # could time out while av-benchmark extracts features.
        if info.is_main:
            self._finish(totals, iteration, time.time() - started)

    def _mux(self, source: ConditionSource, item_id: str, name: str, wav: torch.Tensor, rate: int,
             failures: list[Failure]) -> None:
        video = source.source_video(item_id)
        if video is None:
            return
        target = self.video_out_dir / f"{name}.mp4"
        try:
            mux_video_with_audio(video, wav, rate, target, duration=self.seq.duration)
        except MediaError as e:
            logging.warning("no mp4 for %s: %s", item_id, e)
            failures.append(Failure(item_id, str(video), e.reason, str(e)))

    # ---------------------------------------------------------------------- metrics
    def _finish(self, totals: list[dict[str, Any]], iteration: int | None, seconds: float) -> None:
        written = sum(t["written"] for t in totals)
        failures = [f for t in totals for f in t["failures"]]
        if self.gt_cache is None:
            reason = "no ground-truth cache given (set Evaluate.gt_cache to an av-benchmark cache dir)"
            result = EvaluationResult({}, {name: reason for name in benchmark.ALL_METRICS},
                                      "", str(self.audio_dir / "cache"))
        else:
            hook = EvaluationHook(gt_cache=self.gt_cache, tag=self.tag, audio_length=self.seq.duration)
            if embedders.av_bench_unavailable_reason() is not None and (self.audio_dir / "cache").is_dir():
                logging.warning("evaluating the existing pred cache %s, which this run did not "
                                "re-extract (av-benchmark is unavailable)", self.audio_dir / "cache")
            result = hook.evaluate(self.audio_dir)
        extra = {"network": self.network_name, "weights": str(self.weights), "generated": written,
                 "seconds": round(seconds, 2), "failures": failures,
                 "audio_dir": str(self.audio_dir)}
        writer = SummaryWriter(str(self.output_dir))
        try:
            publish(result, tag=self.tag, iteration=iteration or 0, writer=writer,
                    json_path=self.output_dir / "metrics.json", extra=extra)
        finally:
            writer.close()
        logging.info("%s: wrote %d flac files to %s (%d failures) in %.1f s; metrics in %s",
                     self.tag, written, self.audio_dir, len(failures), seconds,
                     self.output_dir / "metrics.json")
        if failures:
            logging.info("failures: %s", json.dumps(failures[:10], indent=1))
