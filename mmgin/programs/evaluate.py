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
from mmgin.eval.hook import EvaluationHook
from mmgin.eval.mux import mux_video_with_audio
from mmgin.eval.report import publish
from mmgin.eval.sources import (CaptionSource, ConditionSource, Failure, StoreSource,
                                VideoFolderSource, read_captions)
from mmgin.media.errors import MediaError
from mmgin.media.write import write_audio
from mmgin.model import FlowMatching, MMAudio, SequenceConfig, load_network
from mmgin.model.network import VARIANTS
from mmgin.model.sampling import DEFAULT_CFG_STRENGTH, generate_audio
from mmgin.precision import check as check_precision
from mmgin.programs.base import Program

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

    `precision` ('bf16', 'fp16' or 'fp32') is the autocast of generation and decoding, on any
    device, as in Train's validation samples: the same weights, seed and precision give the
    same latents in both.

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
        precision: str = "bf16",
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
        for name, value in {**inputs, "source_videos": source_videos, "gt_cache": gt_cache}.items():
            if value and not Path(value).exists():
                raise FileNotFoundError(f"Evaluate.{name}={value} does not exist")
        if (video_dir or captions_csv) and clip_encoder is None:
            raise ValueError("Evaluate.clip_encoder is required for video_dir/captions_csv (e.g. @get_clip)")
        if video_dir and sync_encoder is None:
            raise ValueError("Evaluate.sync_encoder is required for video_dir (e.g. @get_synchformer)")
        self.precision = check_precision("Evaluate.precision", precision)
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
        self.sigterm_grace_seconds = sigterm_grace_seconds
        self.audio_dir = self.output_dir / f"{tag}-sampled"
        self.video_out_dir = self.output_dir / f"{tag}-sampled-videos"
        self.network: MMAudio | None = None  # these four come from build()
        self.iteration: int | None = None
        self.codec: torch.nn.Module | None = None
        self.source: ConditionSource | None = None

    # ------------------------------------------------------------------------ build
    def build(self) -> None:
        """Builds the network from `weights`, the codec (checking its mode against the network's)
        and the condition source, so a dry run stops on a wrong file or mode."""
        device = dist.info().device
        network, self.iteration = load_network(self.network_name, self.weights, "Evaluate.weights",
                                               self.seq.duration)
        self.network = network.to(device).eval().requires_grad_(False)
        self.codec = self.codec_factory(with_encoder=False).to(device)
        if self.codec.sampling_rate != self.seq.sampling_rate:
            raise ValueError(f"Evaluate.codec is {self.codec.mode} but network {self.network_name} "
                             f"generates {self.seq.mode} latents; bind AudioCodec.mode = '{self.seq.mode}'")
        self.source = self._source(device)

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
        if self.network is None:
            raise RuntimeError("Evaluate.run() before build(): launch it through launch.py")
        with preemption.sigterm_stops(self.sigterm_grace_seconds) as stop:
            self._run(stop)

    def _run(self, stop: preemption.StopRequest) -> None:
        info = dist.info()
        started = time.time()
        network, codec, source = self.network, self.codec, self.source
        if self.write_videos and self.store and not self.source_videos:
            dist.log_main("no Evaluate.source_videos for the store: no mp4s are written")
        count = len(source.ids) if self.limit is None else min(self.limit, len(source.ids))
        names = io.distinct_file_names(source.ids[:count])  # ids from user tables; repeats get their own files
        mine = list(range(info.rank, count, info.world_size))
        generator = torch.Generator(device=info.device).manual_seed(self.seed + info.rank)
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
            audio = generate_audio(network, self.flow, codec, prepared.conditions, generator,
                                   self.cfg_strength, self.precision)
            for n, (index, wav) in enumerate(zip(prepared.indices, audio)):
                write_audio(self.audio_dir / f"{names[index]}.flac", wav, codec.sampling_rate)
                written += 1
                if self.write_videos and (self.videos_per_batch is None or n < self.videos_per_batch):
                    self._mux(source, source.ids[index], names[index], wav, codec.sampling_rate, failures)

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
            self._finish(totals, time.time() - started)

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
    def _finish(self, totals: list[dict[str, Any]], seconds: float) -> None:
        written = sum(t["written"] for t in totals)
        failures = [f for t in totals for f in t["failures"]]
        if self.gt_cache is None:
            reason = "no ground-truth cache given (set Evaluate.gt_cache to an av-benchmark cache dir)"
            result = benchmark.EvaluationResult({}, dict.fromkeys(benchmark.ALL_METRICS, reason), "",
                                                str(self.audio_dir / "cache"))
        else:
            hook = EvaluationHook(gt_cache=self.gt_cache, tag=self.tag, audio_length=self.seq.duration)
            if embedders.av_bench_unavailable_reason() is not None and (self.audio_dir / "cache").is_dir():
                logging.warning("evaluating the existing pred cache %s, which this run did not "
                                "re-extract (av-benchmark is unavailable)", self.audio_dir / "cache")
            result = hook.evaluate(self.audio_dir)
        extra = {"network": self.network_name, "weights": str(self.weights), "generated": written,
                 "seconds": round(seconds, 2), "failures": failures,
                 "audio_dir": str(self.audio_dir)}
        with SummaryWriter(str(self.output_dir)) as writer:
            publish(result, tag=self.tag, iteration=self.iteration or 0, writer=writer,
                    json_path=self.output_dir / "metrics.json", extra=extra)
        logging.info("%s: wrote %d flac files to %s (%d failures) in %.1f s; metrics in %s",
                     self.tag, written, self.audio_dir, len(failures), seconds,
                     self.output_dir / "metrics.json")
        if failures:
            logging.info("failures: %s", json.dumps(failures[:10], indent=1))
