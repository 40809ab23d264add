"""ExtractAudioFeatures: audio clips + captions -> an audio feature store.

For every clip (id, name, start_sample, end_sample) of CLIPS_TSV whose file ``name`` has a
caption in CAPTIONS_TSV, it stores the VAE posterior mean/std of the clip (resampled to the
codec's rate, first 8 s) and CLIP text features of the caption (FACTS §9.3). Captions: the
last row of a repeated id wins, as in the reference (so its own output tsvs work as input);
clips whose name has no caption, or an empty one, are skipped and reported. Audio files are
``<AUDIO_DIR>/<name>.flac``, else ``.wav``, else any file with that stem.
"""

from __future__ import annotations

import time
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
from mmgin.data.store import AUDIO_COLUMNS, StoreFormat, StorePaths
from mmgin.data.store_writer import Plan, PlannedRow
from mmgin.media.audio import decode_audio, prepare_waveform
from mmgin.model.sequence import SequenceConfig
from mmgin.programs.base import Program
from mmgin.programs.extract_video import TEXT_SHAPE, move_to
from mmgin.programs.partition_clips import CLIP_COLUMNS

_PREFERRED_SUFFIXES = (".flac", ".wav")


class ClipRowDecoder:
    """Decodes one clip in a DataLoader worker (the last file is kept: a file's clips are
    consecutive rows, so each long file is decoded once per worker, not once per clip)."""

    def __init__(self, sources: tuple[str, ...], spans: tuple[tuple[int, int], ...], sample_rate: int, num_samples: int):
        self.sources, self.spans = sources, spans
        self.sample_rate, self.num_samples = sample_rate, num_samples
        self._last: tuple[str, torch.Tensor, int] | None = None

    def _mono(self, path: str) -> tuple[torch.Tensor, int]:
        if self._last is None or self._last[0] != path:
            self._last = None  # free the previous file before decoding the next
            decoded = decode_audio(path)
            self._last = (path, decoded.mono(), decoded.sample_rate)
        return self._last[1], self._last[2]

    def __call__(self, row: int) -> dict[str, torch.Tensor]:
        path = self.sources[row]
        start, end = self.spans[row]
        mono, rate = self._mono(path)
        # Whole-file peak normalisation, then the clip at the native rate, then resampling.
        waveform = prepare_waveform(
            mono, rate, self.sample_rate, normalize=True, reject_silent=True, start_sample=start,
            end_sample=end, min_samples=self.num_samples, max_samples=self.num_samples, path=path,
        )
        return {"waveform": waveform.to(torch.float32)}


def _audio_files(audio_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(audio_dir.iterdir()):
        if not path.is_file():
            continue
        current = files.get(path.stem)
        rank = _PREFERRED_SUFFIXES.index(path.suffix) if path.suffix in _PREFERRED_SUFFIXES else len(_PREFERRED_SUFFIXES)
        if current is None or rank < (
            _PREFERRED_SUFFIXES.index(current.suffix) if current.suffix in _PREFERRED_SUFFIXES else len(_PREFERRED_SUFFIXES)
        ):
            files[path.stem] = path
    return files


def plan_clip_rows(audio_dir: Path, captions_tsv: Path, clips_tsv: Path) -> tuple[list[PlannedRow], list[dict[str, str]]]:
    """Rows to extract in clip-table order and the rejected clips with their reasons."""
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"AUDIO_DIR {audio_dir} is not a directory; set AUDIO_DIR")
    captions = {r["id"]: r["caption"] for r in tsv_io.read_table(captions_tsv, required=AUDIO_COLUMNS)}
    files = _audio_files(audio_dir)
    rows, rejected, seen = [], [], set()
    for record in tsv_io.read_table(clips_tsv, required=CLIP_COLUMNS):
        clip_id, name = record["id"], record["name"]
        path = files.get(name, audio_dir / f"{name}.flac")
        reason = None
        if clip_id in seen:
            reason = "duplicate_id"
        elif name not in captions:
            reason = "no_caption"
        elif not captions[name].strip():
            reason = "empty_caption"
        elif name not in files:
            reason = "missing_file"
        else:
            try:
                span = (int(record["start_sample"]), int(record["end_sample"]))
            except ValueError:
                span = None
            if span is None or not 0 <= span[0] < span[1]:
                reason = "bad_span"
        seen.add(clip_id)
        if reason is not None:
            rejected.append({"id": clip_id, "path": str(path), "reason": reason})
            continue
        caption = captions[name]
        rows.append(PlannedRow({"id": clip_id, "caption": caption}, caption, str(path), span))
    return rows, rejected


@gin.configurable
class ExtractAudioFeatures(Program):
    """Audio-text set -> store ``output_dir`` (+ ``<name>.tsv`` with id, caption, + failures).

    ``codec`` (an AudioCodec) fixes the mode (16 kHz or 44.1 kHz). Audio is peak-normalised
    over the whole file and silent files are rejected, as in the reference. ``bf16``, ``tf32``,
    ``feature_dtype`` and ``dedup_text`` as in ExtractVideoFeatures, and
    ``overwrite``/``append``.
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        audio_dir: str | Path = gin.REQUIRED,
        captions_tsv: str | Path = gin.REQUIRED,
        clips_tsv: str | Path = gin.REQUIRED,
        codec=gin.REQUIRED,
        clip=gin.REQUIRED,
        duration: float = 8.0,
        batch_size: int = 32,
        text_batch_size: int = 64,
        num_workers: int = 8,
        bf16: bool = False,
        tf32: bool = True,
        feature_dtype: str = "bfloat16",
        dedup_text: bool = True,
        overwrite: bool = False,
        append: bool = False,
    ):
        self.store = Path(output_dir)
        super().__init__(StorePaths(self.store).partial, published_as=self.store)
        self.audio_dir, self.captions_tsv, self.clips_tsv = Path(audio_dir), Path(captions_tsv), Path(clips_tsv)
        self.codec, self.clip = codec, clip
        self.sequence = SequenceConfig.for_mode(codec.mode, duration)
        self.batch_size, self.text_batch_size, self.num_workers = batch_size, text_batch_size, num_workers
        self.bf16 = bf16
        self.tf32 = tf32
        self.store_format = StoreFormat(feature_dtype, dedup_text)
        self.overwrite, self.append = overwrite, append
        self.times = StageTimes()

    def _plan(self) -> Plan:
        rows, rejected = plan_clip_rows(self.audio_dir, self.captions_tsv, self.clips_tsv)
        no_caption = sum(r["reason"] == "no_caption" for r in rejected)
        if no_caption:
            logging.warning("%d clips have no caption in %s and are skipped", no_caption, self.captions_tsv)
        latent = (self.sequence.latent_seq_len, self.codec.latent_dim)
        return Plan(AUDIO_COLUMNS, rows, {"mean": latent, "std": latent}, TEXT_SHAPE, self.store_format, rejected)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["waveform"].device
        with self._autocast(device), self.times.measure("audio (VAE)", device):
            mean, std = self.codec.encode_waveform(batch["waveform"])
        return {"mean": mean.float(), "std": std.float()}

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
        stop_if_nothing_planned(plan, self.store, f"no clip of {self.clips_tsv} could be extracted")
        device = dist.info().device
        self.codec = move_to(self.codec, device)
        self.clip = move_to(self.clip, device)
        decoder = ClipRowDecoder(
            tuple(r.source for r in plan.rows), tuple(r.span for r in plan.rows),
            self.sequence.sampling_rate, self.sequence.num_audio_samples,
        )
        extraction = Extraction(
            self.store, plan, decoder, self.encode_batch, self.encode_text, self.encode_null_text,
            self.batch_size, self.text_batch_size, self.num_workers, self.overwrite, self.times,
        )
        with cuda_tf32(self.tf32):
            summary = extraction.run()
        log_summary(self.store, summary, time.perf_counter() - start, extraction.times)
