"""ExtractAudioFeatures: audio clips + captions -> an audio feature store.

For every clip (id, name, start_sample, end_sample) of CLIPS_TSV whose file ``name`` has a
caption in CAPTIONS_TSV, it stores the VAE posterior mean/std of the clip (resampled to the
codec's rate, first 8 s) and CLIP text features of the caption (FACTS §9.3). Captions: the
last row of a repeated id wins, as in the reference (so its own output tsvs work as input);
clips whose name has no caption, or an empty one, are skipped and reported. Audio files are
``<AUDIO_DIR>/<name>.flac``, else ``.wav``, else any file with that stem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import gin
import torch
from absl import logging

from mmgin import precision as numerics
from mmgin.data import tsv as tsv_io
from mmgin.data.store import AUDIO_COLUMNS, CLIP_COLUMNS
from mmgin.data.store_writer import Plan, PlannedRow
from mmgin.media.audio import decode_audio, prepare_waveform
from mmgin.programs.extraction_base import ExtractionProgram, PlannedRows, media_files


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


def plan_clip_rows(audio_dir: Path, captions_tsv: Path, clips_tsv: Path) -> tuple[list[PlannedRow], list[dict[str, str]]]:
    """Rows to extract in clip-table order and the rejected clips with their reasons."""
    files = media_files(audio_dir, "AUDIO_DIR", (".flac", ".wav"))
    captions = {r["id"]: r["caption"] for r in tsv_io.read_table(captions_tsv, required=AUDIO_COLUMNS)}
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
class ExtractAudioFeatures(ExtractionProgram):
    """Audio-text set -> store ``output_dir`` (+ ``<name>.tsv`` with id, caption, + failures).

    ``codec`` (an AudioCodec) fixes the mode (16 kHz or 44.1 kHz). Audio is peak-normalised
    over the whole file and silent files are rejected, as in the reference. ``precision``,
    ``tf32``, ``feature_dtype`` and ``dedup_text`` as in ExtractVideoFeatures, and
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
        precision: str = "fp32",
        tf32: bool = True,
        feature_dtype: str = "bf16",
        dedup_text: bool = True,
        overwrite: bool = False,
        append: bool = False,
    ):
        super().__init__(output_dir, codec, clip, duration, batch_size, text_batch_size, num_workers,
                         precision, tf32, feature_dtype, dedup_text, overwrite, append)
        self.audio_dir, self.captions_tsv, self.clips_tsv = Path(audio_dir), Path(captions_tsv), Path(clips_tsv)

    def plan_rows(self) -> PlannedRows:
        rows, rejected = plan_clip_rows(self.audio_dir, self.captions_tsv, self.clips_tsv)
        no_caption = sum(r["reason"] == "no_caption" for r in rejected)
        if no_caption:
            logging.warning("%d clips have no caption in %s and are skipped", no_caption, self.captions_tsv)
        latent = (self.sequence.latent_seq_len, self.codec.latent_dim)
        return AUDIO_COLUMNS, rows, rejected, {"mean": latent, "std": latent}

    def nothing_to_extract(self) -> str:
        return f"no clip of {self.clips_tsv} could be extracted"

    def row_decoder(self, plan: Plan) -> ClipRowDecoder:
        return ClipRowDecoder(
            tuple(r.source for r in plan.rows), tuple(r.span for r in plan.rows),
            self.sequence.sampling_rate, self.sequence.num_audio_samples,
        )

    def encode_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = batch["waveform"].device
        with numerics.autocast(self.precision, device), self.times.measure("audio (VAE)", device):
            mean, std = self.codec.encode_waveform(batch["waveform"])
        return {"mean": mean.float(), "std": std.float()}
