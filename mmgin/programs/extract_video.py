"""ExtractVideoFeatures: videos + a label table -> a video feature store.

For every row (id, label) of VIDEO_TSV with a file ``<VIDEO_DIR>/<id>.mp4`` it stores the VAE
posterior mean/std of the soundtrack's first 8 s, CLIP features of 64 frames at 8 fps,
Synchformer features of 200 frames at 25 fps, and CLIP text features of the label (FACTS
§9.1). Under torchrun each rank extracts its share of fixed blocks; see
mmgin.data.extraction and mmgin.data.store_writer for sharding, resuming and failures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gin
import torch
from absl import logging

from mmgin import dist
from mmgin.data import tsv as tsv_io
from mmgin.data.extraction import (
    encode_captions,
    cuda_tf32,
    encode_null_text,
    stop_if_nothing_planned,
    Extraction,
    StageTimes,
    discard_empty_workdir,
    log_summary,
    plan_run,
)
from mmgin.data.store import VIDEO_COLUMNS, StoreFormat, StorePaths
from mmgin.data.store_writer import Plan, PlannedRow
from mmgin.media.audio import load_audio
from mmgin.media.video import clip_frames_to_float, decode_video_frames, sync_frames_to_float
from mmgin.model.sequence import SYNC_FPS, SequenceConfig
from mmgin.programs.base import Program

TEXT_SHAPE = (77, 1024)


@dataclass(frozen=True)
class VideoRowDecoder:
    """Decodes one video in a DataLoader worker: soundtrack waveform and both frame streams."""

    sources: tuple[str, ...]
    sample_rate: int
    num_samples: int
    normalize_audio: bool
    clip_frames: int
    sync_frames: int

    def __call__(self, row: int) -> dict[str, torch.Tensor]:
        path = self.sources[row]
        # The audio first: it is cheap, and a silent or audio-less video fails before decoding frames.
        waveform = load_audio(
            path, self.sample_rate, normalize=self.normalize_audio, reject_silent=self.normalize_audio,
            min_samples=self.num_samples, max_samples=self.num_samples,
        )
        # Resized uint8 frames: the float scaling runs on the encoders' device.
        clip, sync = decode_video_frames(path, clip_frames=self.clip_frames, sync_frames=self.sync_frames)
        return {"waveform": waveform.to(torch.float32), "clip_frames": clip, "sync_frames": sync}


def plan_video_rows(video_dir: Path, video_tsv: Path) -> tuple[list[PlannedRow], list[dict[str, str]], int]:
    """Rows to extract in tsv order, rejected rows (duplicate id, empty label, no file), unlisted
    files. An empty label is a gap in the table, not a caption: its row is rejected, not trained
    on with the features of an empty string."""
    if not video_dir.is_dir():
        raise FileNotFoundError(f"VIDEO_DIR {video_dir} is not a directory; set VIDEO_DIR")
    files: dict[str, Path] = {}
    for path in sorted(video_dir.iterdir()):
        if path.is_file() and (path.stem not in files or path.suffix == ".mp4"):
            files[path.stem] = path
    rows, rejected, seen = [], [], set()
    for record in tsv_io.read_table(video_tsv, required=VIDEO_COLUMNS):
        video_id, label = record["id"], record["label"]
        path = files.get(video_id, video_dir / f"{video_id}.mp4")
        if video_id in seen:
            rejected.append({"id": video_id, "path": str(path), "reason": "duplicate_id"})
        elif not label.strip():
            rejected.append({"id": video_id, "path": str(path), "reason": "empty_caption"})
        elif video_id not in files:
            rejected.append({"id": video_id, "path": str(path), "reason": "missing_file"})
        else:
            rows.append(PlannedRow({"id": video_id, "label": label}, label, str(path)))
        seen.add(video_id)
    return rows, rejected, len(set(files) - seen)


def move_to(module, device: torch.device):
    """Encoders are nn.Modules (or expose ``to``); extraction runs them in eval mode."""
    return module.to(device) if hasattr(module, "to") else module


@gin.configurable
class ExtractVideoFeatures(Program):
    """Video set -> store ``output_dir`` (+ ``<name>.tsv`` with id, label, + failure report).

    ``codec`` (an AudioCodec) fixes the mode: 16 kHz (latents 250x20) or 44.1 kHz (345x40).
    ``normalize_audio`` peak-normalises the soundtrack (the reference does for training sets,
    not for val/test). The encoders run in float32, on CUDA with TF32 matmuls (``tf32``, the
    reference's setting: features within ~1e-3 relative of strict float32; a CPU is always
    strict float32). ``bf16`` runs them under bfloat16 autocast instead (faster; features differ
    from float32 by ~1e-2 relative, see bench/README.md).
    ``compile`` compiles the CLIP image tower and Synchformer with ``compile_backend``
    (static shapes; a minute or two of compilation on the first batch, then faster batches).
    ``feature_dtype``/``dedup_text`` choose the store layout; 'float32' and False give the
    reference layout. A finished store is left as it is (the log says how many input rows are
    new or gone); ``overwrite`` rebuilds it, ``append`` extends it with the new rows only.
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        video_dir: str | Path = gin.REQUIRED,
        video_tsv: str | Path = gin.REQUIRED,
        codec=gin.REQUIRED,
        clip=gin.REQUIRED,
        synchformer=gin.REQUIRED,
        duration: float = 8.0,
        normalize_audio: bool = True,
        batch_size: int = 16,
        text_batch_size: int = 64,
        num_workers: int = 8,
        bf16: bool = False,
        tf32: bool = True,
        compile: bool = False,
        compile_backend: str = "inductor",
        feature_dtype: str = "bfloat16",
        dedup_text: bool = True,
        overwrite: bool = False,
        append: bool = False,
    ):
        self.store = Path(output_dir)
        super().__init__(StorePaths(self.store).partial, published_as=self.store)
        self.video_dir, self.video_tsv = Path(video_dir), Path(video_tsv)
        self.codec, self.clip, self.synchformer = codec, clip, synchformer
        self.sequence = SequenceConfig.for_mode(codec.mode, duration)
        self.normalize_audio = normalize_audio
        self.batch_size, self.text_batch_size, self.num_workers = batch_size, text_batch_size, num_workers
        self.bf16 = bf16
        self.tf32 = tf32
        self.compile, self.compile_backend = compile, compile_backend
        self.store_format = StoreFormat(feature_dtype, dedup_text)
        self.overwrite, self.append = overwrite, append
        self.times = StageTimes()

    def _plan(self) -> Plan:
        rows, rejected, unlisted = plan_video_rows(self.video_dir, self.video_tsv)
        if unlisted:
            logging.info("%d files in %s are not in %s and are ignored", unlisted, self.video_dir, self.video_tsv)
        seq = self.sequence
        latent = (seq.latent_seq_len, self.codec.latent_dim)
        shapes = {"mean": latent, "std": latent, "clip_features": (seq.clip_seq_len, 1024),
                  "sync_features": (seq.sync_seq_len, 768)}
        return Plan(VIDEO_COLUMNS, rows, shapes, TEXT_SHAPE, self.store_format, rejected)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def compile_encoders(self) -> None:
        """With ``compile``, compiles CLIP's image tower and Synchformer in place (their modules
        stay compiled for any later program that shares them)."""
        if self.compile:
            self.clip.compile_for_inference(self.compile_backend)
            self.synchformer.compile_for_inference(self.compile_backend)

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["waveform"].device
        with self._autocast(device):
            with self.times.measure("audio (VAE)", device):
                mean, std = self.codec.encode_waveform(batch["waveform"])
            with self.times.measure("clip", device):
                clip = self.clip.encode_frames(clip_frames_to_float(batch["clip_frames"]))
            with self.times.measure("sync", device):
                sync = self.synchformer(sync_frames_to_float(batch["sync_frames"]))
        return {"mean": mean.float(), "std": std.float(), "clip_features": clip.float(),
                "sync_features": sync.float()}

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return encode_captions(self.clip, captions, self.bf16)

    def encode_null_text(self) -> torch.Tensor:
        return encode_null_text(self.clip, self.bf16)

    def run(self) -> None:
        start = time.perf_counter()
        plan = dist.broadcast_object(
            plan_run(self.store, self._plan(), self.overwrite, self.append) if dist.is_main() else None)
        if plan is None:
            discard_empty_workdir(self.store)
            return
        stop_if_nothing_planned(plan, self.store, f"no row of {self.video_tsv} has a video in {self.video_dir}")
        device = dist.info().device
        self.codec = move_to(self.codec, device)
        self.clip = move_to(self.clip, device)
        self.synchformer = move_to(self.synchformer, device)
        self.compile_encoders()
        seq = self.sequence
        decoder = VideoRowDecoder(
            tuple(row.source for row in plan.rows), seq.sampling_rate, seq.num_audio_samples,
            self.normalize_audio, seq.clip_seq_len, int(seq.duration * SYNC_FPS),
        )
        extraction = Extraction(
            self.store, plan, decoder, self.encode_batch, self.encode_text, self.encode_null_text,
            self.batch_size, self.text_batch_size, self.num_workers, self.overwrite, self.times,
        )
        with cuda_tf32(self.tf32):
            summary = extraction.run()
        log_summary(self.store, summary, time.perf_counter() - start, extraction.times)
