"""The part of every extraction program that is not about a particular encoder.

Rows are cut into fixed global blocks of ``batch_size`` consecutive rows; block k belongs to
rank k mod W. A block is always encoded as one batch (its rows that decoded), whatever the
number of ranks and whether the run was resumed, so 1-process, N-process and interrupted runs
write bit-identical stores. Media is decoded in DataLoader workers (a row per item, two blocks
in flight), so the encoders never wait on decoding; a file that cannot be decoded is recorded
with its reason and skipped, never stopping the run.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from absl import logging
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmgin import dist, preemption
from mmgin.data import null_text
from mmgin.data.store import StoreError, StorePaths, is_complete, is_store, is_vacant
from mmgin.data import tsv as tsv_io
from mmgin.data.store_writer import (
    FAILURE_COLUMNS,
    PENDING,
    Plan,
    StoreWriter,
    Summary,
    append_plan,
    finish_publishing,
    input_changes,
)
from mmgin.media.errors import MediaError

# The encoders run in float32 (TF32 on CUDA per the programs' `tf32`) or under bfloat16 autocast.
ENCODER_PRECISIONS = ("fp32", "bf16")
RowDecoder = Callable[[int], Mapping[str, torch.Tensor]]
# Encodes a batch of decoded rows (stacked on the device) into per-row store features.
BatchEncoder = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]
TextEncoder = Callable[[list[str]], torch.Tensor]


class RowDataset(Dataset):
    """Item i decodes row ``rows[i]`` with ``decoder``; runs in DataLoader workers.

    Rows, not blocks, are the unit of work, so all workers help with the block the encoders
    need next (a block's first row arrives after one decode, not a block's worth) and small
    sets use every worker. An item is a dict: ``row``, ``item`` (the decoded tensors, or None),
    ``failure`` ((reason, message), or None) and ``decode_seconds``.
    """

    def __init__(self, rows: Sequence[int], decoder: RowDecoder):
        self.rows = list(rows)
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        start = time.perf_counter()
        row, item, failure = self.rows[index], None, None
        try:
            item = dict(self.decoder(row))
        except MediaError as e:
            failure = (e.reason, str(e))
        except Exception as e:  # noqa: BLE001 - a bad file must never stop the extraction
            failure = ("decode_error", f"{type(e).__name__}: {e}")
        return {"row": row, "item": item, "failure": failure, "decode_seconds": time.perf_counter() - start}


def row_loader(rows: Sequence[int], decoder: RowDecoder, workers: int, block_size: int, pin_memory: bool) -> DataLoader:
    """Decoded rows in order; enough in flight that two blocks are being decoded ahead."""
    workers = min(workers, len(rows))
    prefetch = max(2, -(-2 * block_size // workers)) if workers else None
    return DataLoader(RowDataset(rows, decoder), batch_size=None, num_workers=workers,
                      pin_memory=pin_memory, prefetch_factor=prefetch,
                      worker_init_fn=preemption.ignore_sigterm_in_worker)


@dataclass
class StageTimes:
    """Seconds spent per stage on this rank, for the throughput log and the benchmark."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    @contextlib.contextmanager
    def measure(self, stage: str, device: torch.device | None = None):
        """Times a block; on CUDA it waits for the queued kernels, so the time is the stage's."""
        start = time.perf_counter()
        yield
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        self.add(stage, time.perf_counter() - start)

    def text(self) -> str:
        return ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.seconds.items()))


def rank_blocks(count: int, block_size: int, status: torch.Tensor, rank: int, world: int) -> list[list[int]]:
    """This rank's blocks (k mod W == rank) that still have a pending row."""
    starts = range(rank * block_size, count, world * block_size)
    mine = [list(range(s, min(s + block_size, count))) for s in starts]
    return [b for b in mine if bool((status[b[0]:b[-1] + 1] == PENDING).any())]


@dataclass
class Extraction:
    """One store being extracted: the plan, how to decode a row, how to encode features."""

    store: Path
    plan: Plan
    decoder: RowDecoder
    encode_batch: BatchEncoder
    encode_text: TextEncoder
    encode_null_text: Callable[[], torch.Tensor]
    batch_size: int = 16
    text_batch_size: int = 64
    num_workers: int = 8
    overwrite: bool = False
    times: StageTimes = field(default_factory=StageTimes)
    sigterm_grace_seconds: float = preemption.DEFAULT_GRACE_SECONDS

    def run(self) -> Summary | None:
        """Extracts this rank's share, then rank 0 finalises; returns the summary on rank 0.

        SIGTERM stops each rank after its current block, keeping the rows done (a resumed run
        continues), and returns None without finalising.
        """
        with preemption.sigterm_stops(self.sigterm_grace_seconds) as stop:
            return self._run(stop)

    def _run(self, stop: preemption.StopRequest) -> Summary | None:
        writer = StoreWriter(self.store, self.plan)
        if dist.is_main() and self.plan.appends and is_store(self.store):
            refuse_another_text_encoder(self.store, self.null_text_feature)
        state = dist.broadcast_object(writer.prepare() if dist.is_main() else None)
        dist.barrier()
        if state != "finalizing":
            if state == "resume":
                dist.log_main("resuming the unfinished extraction in %s", writer.work)
            rows, texts = writer.row_status(), writer.text_status()
            if bool((rows == PENDING).any()) or bool((texts == PENDING).any()):
                writer.open()
                try:
                    self._encode_texts(writer, texts, stop)
                    self._encode_rows(writer, rows, stop)
                finally:
                    writer.close()
        if preemption.any_rank(stop.requested):
            dist.warn_main("%s: stopped by SIGTERM with the rows done kept; %s", writer.paths.name, preemption.RESUME)
            return None
        if dist.is_main() and (state != "finalizing" or not null_text.record_path(writer.work).is_file()):
            null_text.write(writer.work, self.null_text_feature)
        dist.barrier()
        summary = writer.finalize(self.overwrite) if dist.is_main() else None
        dist.barrier()
        return summary

    @functools.cached_property
    def null_text_feature(self) -> torch.Tensor:
        """The store's null-text record, encoded once (an append compares it with the store's
        record, then records it)."""
        return self.encode_null_text()

    def _encode_texts(self, writer: StoreWriter, status: torch.Tensor, stop: preemption.StopRequest) -> None:
        for block in rank_blocks(len(writer.captions), self.text_batch_size, status, dist.rank(), dist.world_size()):
            if stop.requested:
                return
            with torch.inference_mode(), self.times.measure("text", dist.info().device):
                features = self.encode_text([writer.captions[i] for i in block])
            writer.write_text(block, features)

    def _encode_rows(self, writer: StoreWriter, status: torch.Tensor, stop: preemption.StopRequest) -> None:
        blocks = rank_blocks(len(self.plan.rows), self.batch_size, status, dist.rank(), dist.world_size())
        if not blocks:
            return
        device = dist.info().device
        decoded = iter(row_loader([r for b in blocks for r in b], self.decoder, self.num_workers,
                                  self.batch_size, pin_memory=device.type == "cuda"))
        total = sum(len(b) for b in blocks)
        progress = tqdm(total=total, unit="clip", disable=not dist.is_main(), desc=writer.paths.name)
        done = 0
        begin = last_log = time.perf_counter()
        for block in blocks:
            if stop.requested:
                break
            rows, items = [], []
            for _ in block:
                wait_start = time.perf_counter()
                result = next(decoded)
                self.times.add("wait_for_decode", time.perf_counter() - wait_start)
                self.times.add("decode (workers)", result["decode_seconds"])
                if result["failure"] is not None:
                    reason, message = result["failure"]
                    logging.warning("skipping %s: %s", self.plan.rows[result["row"]].source, message)
                    writer.fail_row(result["row"], reason, message)
                else:
                    rows.append(result["row"])
                    items.append({k: v.to(device, non_blocking=True) for k, v in result["item"].items()})
            if rows:
                # The block is one batch whatever decoded: stacked on the device, bit for bit
                # the batch a single process would stack.
                batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
                del items
                with torch.inference_mode():
                    features = self.encode_batch(batch)
                with self.times.measure("write"):
                    writer.write_rows(rows, {k: v.cpu() for k, v in features.items()})
            done += len(block)
            progress.update(len(block))
            now = time.perf_counter()
            if now - last_log > 30 or done == total:
                rate = done / max(now - begin, 1e-9)
                dist.log_main(
                    "%s: %d/%d clips on this rank, %.2f clips/s per rank (~%.2f over %d ranks); %s",
                    writer.paths.name, done, total, rate, rate * dist.world_size(),
                    dist.world_size(), self.times.text(),
                )
                last_log = now
        progress.close()


def plan_run(store: Path, plan: Plan, overwrite: bool, append: bool) -> Plan | None:
    """The plan this run carries out (rank 0), or None when the store is finished and is not to
    be rebuilt or extended; then the log says so, and how many input rows are new or gone.

    ``overwrite`` rebuilds a finished store from ``plan``; ``append`` extends it with the new
    rows only (`append_plan`). An unfinished append is resumed with the plan it started with:
    by then the store may already be moved aside. Raises before any work when something that
    may not be replaced is in the store's place.
    """
    if overwrite and append:
        raise ValueError("overwrite=True and append=True: choose one (overwrite rebuilds the store, "
                         "append extends it with the new input rows)")
    paths = StorePaths(store)
    paths.refuse_stem_named(paths.tsv, paths.failures)
    started = _unfinished_append(paths)
    if started is not None:
        if not append:
            raise StoreError(f"{paths.partial} holds an unfinished append to {store}; re-run with "
                             "append=True to finish it")
        dist.log_main("resuming the unfinished append to %s (%d new rows)", store, len(started.rows))
        return started
    if is_complete(store):
        finish_publishing(store)
        if overwrite:
            return plan
        reported = tsv_io.read_table(paths.failures) if paths.failures.is_file() else []
        changes = input_changes(plan, tsv_io.read_table(paths.tsv), reported)
        if append and changes.new_rows:
            dist.log_main("appending to %s: %s", store, changes.text())
            return append_plan(store, plan, changes, reported)
        if append and changes.new_rejected:  # nothing to extract: only the report grows
            tsv_io.write_table(paths.failures, FAILURE_COLUMNS, list(reported) + changes.new_rejected)
            dist.log_main("%s: no new row to extract; %d rejected rows added to %s", store,
                          len(changes.new_rejected), paths.failures)
            return None
        if changes.new or changes.gone:
            dist.log_main("%s is complete, but its inputs changed since: %s. Nothing is done: set "
                          "append=True to add the new rows, or overwrite=True to rebuild it", store,
                          changes.text())
        else:
            dist.log_main("%s is already complete; nothing to do (set overwrite=True to rebuild)", store)
        return None
    if is_vacant(store) or (overwrite and is_store(store)):
        return plan
    what = ("a store without its table " + str(paths.tsv) + "; set overwrite=True to rebuild it"
            if is_store(store) else "it is no store (no meta.json) and is never replaced, with "
            "overwrite=True neither: move it away, or write the store elsewhere")
    raise StoreError(f"{store} exists but is not a finished store: {what}")


def _unfinished_append(paths: StorePaths) -> Plan | None:
    plan_file = paths.partial / "plan.json"
    if not plan_file.is_file():
        return None
    saved = Plan.from_json(plan_file.read_text())
    return saved if saved.appends else None


def refuse_another_text_encoder(store: Path, null_feature: torch.Tensor) -> None:
    """Rows appended to a store must come from the text encoder that made it: its null-text
    record (mmgin.data.null_text) must be what this run's encoder gives for ''."""
    recorded = null_text.read(store)
    if recorded is None:
        raise StoreError(
            f"store {store} has no null-text record ({null_text.FILE_NAME}), so nothing shows which "
            f"text encoder made it; add the record first ({null_text.add_record_command([store])}), "
            "then append"
        )
    if not torch.equal(null_feature.detach().to("cpu", torch.float32).reshape(recorded.shape), recorded):
        raise StoreError(
            f"this run's text encoder encodes '' differently from {null_text.record_path(store)}: the "
            "store's text features come from another encoder, which appended rows would not match. "
            "Append with the encoder that made the store, or rebuild it with overwrite=True"
        )


def discard_empty_workdir(store: Path) -> None:
    """Removes ``<name>.partial`` if it holds only the config files a Program writes."""
    work = StorePaths(store).partial
    if work.is_dir() and {p.name for p in work.iterdir()} <= {"config.gin", "operative_config.gin"}:
        shutil.rmtree(work)


def log_summary(store: Path, summary: Summary | None, seconds: float, times: StageTimes) -> None:
    if summary is not None:
        logging.info("extraction of %s done in %.1f s: %s. Failure report: %s. Time (rank 0): %s",
                     store, seconds, summary.text(), StorePaths(store).failures, times.text())


def stop_if_nothing_planned(plan: Plan, store: Path, what: str) -> None:
    """Every row was rejected: write the failure report (rank 0) and stop, saying where to look."""
    if plan.rows:
        return
    failures = StorePaths(store).failures
    if dist.is_main() and not is_store(store):  # a store's own report stays as it is
        tsv_io.write_table(failures, FAILURE_COLUMNS, plan.rejected)
    raise ValueError(f"{what} ({len(plan.rejected)} rejected; see {failures})")

