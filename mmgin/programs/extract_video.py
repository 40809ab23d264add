"""ExtractVideoFeatures: videos + a label table -> a video feature store.

For every row (id, label) of VIDEO_TSV with a file ``<VIDEO_DIR>/<id>.mp4`` it stores the VAE
posterior mean/std of the soundtrack's first 8 s, CLIP features of 64 frames at 8 fps,
Synchformer features of 200 frames at 25 fps, and CLIP text features of the label (FACTS
§9.1). Under torchrun each rank extracts its share of fixed blocks; see
mmgin.data.extraction and mmgin.data.store_writer for sharding, resuming and failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import gin
import torch
from absl import logging

from mmgin import precision as numerics
from mmgin.data import tsv as tsv_io
from mmgin.data.store import VIDEO_COLUMNS
from mmgin.data.store_writer import Plan, PlannedRow
from mmgin.media.audio import load_audio
from mmgin.media.video import clip_frames_to_float, decode_video_frames, sync_frames_to_float
from mmgin.model.sequence import CLIP_DIM, SYNC_DIM, SYNC_FPS
from mmgin.programs.extraction_base import ExtractionProgram, PlannedRows, media_files


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
    files = media_files(video_dir, "VIDEO_DIR", (".mp4",))
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


@gin.configurable
class ExtractVideoFeatures(ExtractionProgram):
    """Video set -> store ``output_dir`` (+ ``<name>.tsv`` with id, label, + failure report).

    ``codec`` (an AudioCodec) fixes the mode: 16 kHz (latents 250x20) or 44.1 kHz (345x40).
    ``normalize_audio`` peak-normalises the soundtrack (the reference does for training sets,
    not for val/test). ``precision`` 'fp32' runs the encoders in float32, on CUDA with TF32
    matmuls (``tf32``, the reference's setting: features within ~1e-3 relative of strict
    float32; a CPU is always strict float32); 'bf16' runs them under bfloat16 autocast instead
    (faster; features differ from float32 by ~1e-2 relative, see mmgin/data/README.md).
    ``compile`` compiles the CLIP image tower and Synchformer with ``compile_backend``
    (static shapes; a minute or two of compilation on the first batch, then faster batches).
    ``feature_dtype`` ('bf16' or 'fp32', also 'fp16') and ``dedup_text`` choose the store
    layout; 'fp32' and False give the reference layout. A finished store is left as it is (the
    log says how many input rows are new or gone); ``overwrite`` rebuilds it, ``append``
    extends it with the new rows only.
    """

    ENCODERS = ("codec", "clip", "synchformer")

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
        precision: str = "fp32",
        tf32: bool = True,
        compile: bool = False,
        compile_backend: str = "inductor",
        feature_dtype: str = "bf16",
        dedup_text: bool = True,
        overwrite: bool = False,
        append: bool = False,
    ):
        super().__init__(output_dir, codec, clip, duration, batch_size, text_batch_size, num_workers,
                         precision, tf32, feature_dtype, dedup_text, overwrite, append)
        self.video_dir, self.video_tsv = Path(video_dir), Path(video_tsv)
        self.synchformer = synchformer
        self.normalize_audio = normalize_audio
        self.compile, self.compile_backend = compile, compile_backend

    def plan_rows(self) -> PlannedRows:
        rows, rejected, unlisted = plan_video_rows(self.video_dir, self.video_tsv)
        if unlisted:
            logging.info("%d files in %s are not in %s and are ignored", unlisted, self.video_dir, self.video_tsv)
        seq = self.sequence
        latent = (seq.latent_seq_len, self.codec.latent_dim)
        shapes = {"mean": latent, "std": latent, "clip_features": (seq.clip_seq_len, CLIP_DIM),
                  "sync_features": (seq.sync_seq_len, SYNC_DIM)}
        return VIDEO_COLUMNS, rows, rejected, shapes

    def nothing_to_extract(self) -> str:
        return f"no row of {self.video_tsv} has a video in {self.video_dir}"

    def row_decoder(self, plan: Plan) -> VideoRowDecoder:
        seq = self.sequence
        return VideoRowDecoder(
            tuple(row.source for row in plan.rows), seq.sampling_rate, seq.num_audio_samples,
            self.normalize_audio, seq.clip_seq_len, int(seq.duration * SYNC_FPS),
        )

    def prepare_encoders(self, device: torch.device) -> None:
        super().prepare_encoders(device)
        self.compile_encoders()

    def compile_encoders(self) -> None:
        """With ``compile``, compiles CLIP's image tower and Synchformer in place (their modules
        stay compiled for any later program that shares them)."""
        if self.compile:
            self.clip.compile_for_inference(self.compile_backend)
            self.synchformer.compile_for_inference(self.compile_backend)

    def encode_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["waveform"].device
        with numerics.autocast(self.precision, device):
            with self.times.measure("audio (VAE)", device):
                mean, std = self.codec.encode_waveform(batch["waveform"])
            with self.times.measure("clip", device):
                clip = self.clip.encode_frames(clip_frames_to_float(batch["clip_frames"]))
            with self.times.measure("sync", device):
                sync = self.synchformer(sync_frames_to_float(batch["sync_frames"]))
        return {"mean": mean.float(), "std": std.float(), "clip_features": clip.float(),
                "sync_features": sync.float()}
