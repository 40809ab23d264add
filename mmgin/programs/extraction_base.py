"""What the extraction programs share: their settings and the sequence of a run.

A run plans its rows (rank 0), stops early when the store is finished or nothing can be
extracted, moves the encoders to this rank's device, then lets mmgin.data.extraction decode
and encode every row and publish the store, under the TF32 setting. A program says only what
is particular to it: its rows and feature shapes (`plan_rows`), its decoder (`row_decoder`)
and its encoders (`ENCODERS`, `encode_batch`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

import torch

from mmgin import dist
from mmgin import precision as numerics
from mmgin.data import null_text
from mmgin.data.extraction import (
    ENCODER_PRECISIONS,
    Extraction,
    RowDecoder,
    StageTimes,
    discard_empty_workdir,
    log_summary,
    plan_run,
    stop_if_nothing_planned,
)
from mmgin.data.store import StoreFormat, StorePaths
from mmgin.data.store_writer import Plan, PlannedRow
from mmgin.model.sequence import TEXT_SHAPE, SequenceConfig
from mmgin.programs.base import Program

# A program's rows: (table columns, rows to extract, rejected inputs, per-row feature shapes).
PlannedRows = tuple[tuple[str, ...], list[PlannedRow], list[dict[str, str]], dict[str, tuple[int, ...]]]


def to_device(module, device: torch.device):
    """Encoders are nn.Modules (or expose ``to``); extraction runs them in eval mode."""
    return module.to(device) if hasattr(module, "to") else module


def media_files(directory: Path, setting: str, preferred: tuple[str, ...]) -> dict[str, Path]:
    """Each stem's file in ``directory`` (the gin macro ``setting``): the one with the first
    suffix of ``preferred`` it has, else the first of its names in sorted order."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{setting} {directory} is not a directory; set {setting}")

    def preference(path: Path) -> tuple[int, Path]:
        return (preferred.index(path.suffix) if path.suffix in preferred else len(preferred)), path

    # Most preferred last: of a stem's files, the mapping keeps the last one.
    ordered = sorted(directory.iterdir(), key=preference, reverse=True)
    return {path.stem: path for path in ordered if path.is_file()}


class ExtractionProgram(Program):
    """Base of ExtractVideoFeatures and ExtractAudioFeatures (see those for the settings).

    ``codec`` fixes the mode, ``clip`` encodes the captions and the null text; the attributes
    named in ``ENCODERS`` are moved to the device at the start of a run.
    """

    ENCODERS: tuple[str, ...] = ("codec", "clip")

    def __init__(
        self,
        output_dir: str | Path,
        codec,
        clip,
        duration: float,
        batch_size: int,
        text_batch_size: int,
        num_workers: int,
        precision: str,
        tf32: bool,
        feature_dtype: str,
        dedup_text: bool,
        overwrite: bool,
        append: bool,
    ):
        name = type(self).__name__
        self.store = Path(output_dir)
        super().__init__(StorePaths(self.store).partial, published_as=self.store)
        self.codec, self.clip = codec, clip
        self.sequence = SequenceConfig.for_mode(codec.mode, duration)
        self.batch_size, self.text_batch_size, self.num_workers = batch_size, text_batch_size, num_workers
        self.precision = numerics.check(f"{name}.precision", precision, ENCODER_PRECISIONS)
        self.tf32 = tf32
        self.store_format = StoreFormat(numerics.check(f"{name}.feature_dtype", feature_dtype), dedup_text)
        self.overwrite, self.append = overwrite, append
        self.times = StageTimes()

    # ---- what each program says -----------------------------------------------------------

    def plan_rows(self) -> PlannedRows:
        """The rows to extract and their feature shapes (rank 0, before any work)."""
        raise NotImplementedError

    def nothing_to_extract(self) -> str:
        """What the error says when every input row was rejected."""
        raise NotImplementedError

    def row_decoder(self, plan: Plan) -> RowDecoder:
        raise NotImplementedError

    def encode_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-row float32 features of a decoded batch on the device, keyed as the shapes."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------

    def _plan(self) -> Plan:
        columns, rows, rejected, shapes = self.plan_rows()
        return Plan(columns, rows, shapes, TEXT_SHAPE, self.store_format, rejected)

    def prepare_encoders(self, device: torch.device) -> None:
        """Moves the encoders to ``device`` (a program may also compile them)."""
        for name in self.ENCODERS:
            setattr(self, name, to_device(getattr(self, name), device))

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """CLIP per-token text features of ``captions`` on this rank's device, as float32."""
        with numerics.autocast(self.precision, dist.info().device):
            return self.clip.encode_text(captions).float()

    def encode_null_text(self) -> torch.Tensor:
        return null_text.encode(self.clip, self.precision)

    def run(self) -> None:
        start = time.perf_counter()
        plan = dist.broadcast_object(
            plan_run(self.store, self._plan(), self.overwrite, self.append) if dist.is_main() else None)
        if plan is None:
            discard_empty_workdir(self.store)
            return
        stop_if_nothing_planned(plan, self.store, self.nothing_to_extract())
        self.prepare_encoders(dist.info().device)
        extraction = Extraction(
            self.store, plan, self.row_decoder(plan), self.encode_batch, self.encode_text, self.encode_null_text,
            self.batch_size, self.text_batch_size, self.num_workers, self.overwrite, self.times,
        )
        with numerics.matmul_tf32(self.tf32):
            summary = extraction.run()
        log_summary(self.store, summary, time.perf_counter() - start, extraction.times)
