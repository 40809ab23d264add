"""Writing a feature store from many processes, resumably, without gathering rows in RAM.

A store is built in ``<name>.partial/`` (also the extraction program's output directory, so
its ``config.gin`` ends up inside the finished store):

    plan.json            the rows to write (id, caption, media path) and the distinct captions
    <key>.memmap         preallocated row data (disk blocks reserved); ranks write rows by index
    progress.rows        one byte per row: 0 pending, 1 done, 2 failed
    progress.text        one byte per distinct caption: 0 pending, 1 done
    failures/<row>.json  why a row failed (written before its progress byte)

Data is written before its progress byte, so a killed run resumes at the first row not marked
and produces the same store as an uninterrupted run. Finalisation (rank 0, after every rank is
done) drops failed rows by compacting each memmap, writes the tsv and the failure report
atomically, writes meta.json, and renames the directory to ``<name>`` — the store only becomes
visible when complete. Each finalisation step can be repeated after a crash.

Replacing a store (``overwrite``, or an append) moves the previous one aside to
``<name>.old-<random hex>`` (the name recorded in ``retired.txt`` inside the new store before
the move) and removes it once the new store is published: nothing beside a store that this
writer did not move there is ever removed, and a directory that is not a store (no meta.json)
is never replaced.

Appending (``Plan.previous``, the finished store's table rows) extracts only the new rows
into ``<name>.partial/``, as any extraction (same blocks, resumable). Finalisation then writes
each file as the finished store's data followed by the new rows' (``<key>.memmap.merging``;
``merged`` marks them all complete), with the new rows' text indices shifted past the store's
text table, and publishes the result as above: old rows bit for bit, then the new ones. The
failure report is merged (the plan's rejected inputs start with the previous report).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from absl import logging
from tensordict import MemoryMappedTensor, TensorDict

from mmgin import io
from mmgin.data import tsv as tsv_io
from mmgin.data.store import (
    META_DTYPES,
    TEXT_INDEX_KEY,
    TEXT_KEY,
    TEXT_TABLE_KEY,
    FeatureStore,
    StoreError,
    StoreFormat,
    StoreLayout,
    StorePaths,
    is_store,
    is_vacant,
)

PENDING, DONE, FAILED = 0, 1, 2
FAILURE_COLUMNS = ("id", "path", "reason")
_PLAN_VERSION = 1
RETIRED_RECORD = "retired.txt"
MERGED_MARKER = "merged"


@dataclass(frozen=True)
class PlannedRow:
    """One row to extract: its tsv fields, the caption whose text feature it gets, its media
    file and, for a clip of a longer file, its [start, end) sample span at the file's rate."""

    fields: Mapping[str, str]
    caption: str
    source: str
    span: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        return self.fields["id"]


@dataclass
class Plan:
    """Everything that decides a store's content; a resumed run must bring the same plan."""

    columns: tuple[str, ...]
    rows: list[PlannedRow]
    row_shapes: dict[str, tuple[int, ...]]
    text_shape: tuple[int, ...]
    store_format: StoreFormat
    # Inputs rejected before extraction (missing media, duplicates, no caption): id, path, reason.
    rejected: list[dict[str, str]] = field(default_factory=list)
    # Append mode: the table rows of the finished store that ``rows`` extend (kept before them).
    previous: list[dict[str, str]] = field(default_factory=list)

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(self.row_shapes, self.text_shape, self.store_format)

    @property
    def appends(self) -> int:
        """How many rows of a finished store this plan extends (0: a new store)."""
        return len(self.previous)

    @property
    def captions(self) -> list[str]:
        """Distinct captions in order of first appearance: the rows of the text table."""
        return list(dict.fromkeys(row.caption for row in self.rows))

    def to_json(self) -> str:
        return json.dumps({
            "version": _PLAN_VERSION,
            "columns": list(self.columns),
            "rows": [[dict(r.fields), r.caption, r.source, r.span] for r in self.rows],
            "row_shapes": {k: list(v) for k, v in self.row_shapes.items()},
            "text_shape": list(self.text_shape),
            # the storage dtype's torch name ('bfloat16'), as plan.json has always recorded it
            "format": [str(self.store_format.dtype).removeprefix("torch."), self.store_format.dedup_text],
            "rejected": self.rejected,
            # only when appending: plans saved before append mode existed still compare equal
            **({"previous": self.previous} if self.previous else {}),
        })

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        return cls(
            columns=tuple(data["columns"]),
            rows=[PlannedRow(f, c, s, None if span is None else tuple(span)) for f, c, s, span in data["rows"]],
            row_shapes={k: tuple(v) for k, v in data["row_shapes"].items()},
            text_shape=tuple(data["text_shape"]),
            store_format=StoreFormat.of(META_DTYPES[f"torch.{data['format'][0]}"], data["format"][1]),
            rejected=data["rejected"],
            previous=data.get("previous", []),
        )

    def first_difference(self, other: "Plan") -> str | None:
        """A short description of how ``other`` differs from this plan, or None if equal."""
        if self.to_json() == other.to_json():
            return None
        for name in ("columns", "row_shapes", "text_shape", "store_format", "previous"):
            if getattr(self, name) != getattr(other, name):
                return f"{name}: {getattr(self, name)} vs {getattr(other, name)}"
        if len(self.rows) != len(other.rows):
            return f"{len(self.rows)} rows vs {len(other.rows)} rows"
        for i, (a, b) in enumerate(zip(self.rows, other.rows)):
            if a != b:
                return f"row {i}: {a} vs {b}"
        return "the rejected inputs differ"


@dataclass
class Summary:
    """What a finished extraction did, for the log and the caller."""

    rows: int
    failed: Counter
    rejected: Counter
    appended: int | None = None  # rows added to the store, when appending

    def text(self) -> str:
        parts = [f"{self.rows} rows written" if self.appended is None
                 else f"{self.appended} rows appended ({self.rows} in the store)"]
        for title, counts in (("skipped", self.failed), ("rejected before extraction", self.rejected)):
            if counts:
                parts.append(f"{title}: " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())))
        return "; ".join(parts)


@dataclass
class InputChanges:
    """How the inputs of a finished store differ from what it was extracted from."""

    new_rows: list[PlannedRow]  # rows to extract: ids neither in the store nor in its report
    new_rejected: list[dict[str, str]]  # rejections not in the report yet (duplicate ids too)
    gone: int  # rows of the store whose id is no longer in the inputs

    @property
    def new(self) -> int:
        return len(self.new_rows) + len(self.new_rejected)

    def text(self) -> str:
        return (f"{self.new} new input rows ({len(self.new_rows)} to extract, {len(self.new_rejected)} "
                f"rejected) and {self.gone} of its rows gone from the inputs")


def _failure_key(record: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(record.get(column, "") for column in FAILURE_COLUMNS)


def input_changes(plan: Plan, stored: Sequence[Mapping[str, str]], reported: Sequence[Mapping[str, str]]) -> InputChanges:
    """Compares ``plan`` (made from the current inputs) with a finished store's table rows
    ``stored`` and failure report ``reported``.

    A planned row is known when its id is in the store with the same fields, or in the report
    (failed rows are not retried: overwrite=True does); with other fields it is a new row
    reusing a stored id, rejected as duplicate_id. A rejection of an id the store holds (its
    media gone since) is not news, except a duplicate.
    """
    stored_by_id = {row["id"]: row for row in stored}
    reported_keys = {_failure_key(r) for r in reported}
    reported_ids = {r["id"] for r in reported}
    new_rows, rejected = [], []
    for row in plan.rows:
        previous = stored_by_id.get(row.id)
        if previous is None:
            if row.id not in reported_ids:
                new_rows.append(row)
        elif any(previous.get(column) != row.fields[column] for column in plan.columns):
            rejected.append({"id": row.id, "path": row.source, "reason": "duplicate_id"})
    rejected += [r for r in plan.rejected if r["id"] not in stored_by_id or r["reason"] == "duplicate_id"]
    inputs = {row.id for row in plan.rows} | {r["id"] for r in plan.rejected}
    return InputChanges(new_rows, [r for r in rejected if _failure_key(r) not in reported_keys],
                        len(set(stored_by_id) - inputs))


def append_plan(directory: Path, plan: Plan, changes: InputChanges, reported: Sequence[Mapping[str, str]]) -> Plan:
    """The plan that extends the finished store ``directory`` with ``changes``: the new rows to
    extract after the store's rows; its failure report, then the new rejections. The store's
    layout, keys and shapes must be the ones ``plan`` would write."""
    previous = FeatureStore.open(directory)
    stored_format = StoreFormat.of(previous.dtype(TEXT_KEY), previous.dedup_text)
    if stored_format != plan.store_format:
        raise StoreError(
            f"store {directory} is laid out with feature_dtype={stored_format.feature_dtype!r}, "
            f"dedup_text={stored_format.dedup_text}, but this extraction is configured with "
            f"feature_dtype={plan.store_format.feature_dtype!r}, dedup_text={plan.store_format.dedup_text}; "
            "set those to the store's to append to it"
        )
    layout = plan.layout
    keys = (*layout.row_shapes, TEXT_KEY)
    extra = sorted(set(previous.keys) - set(keys) - {TEXT_TABLE_KEY, TEXT_INDEX_KEY})
    problems = [f"extra key {key}" for key in extra]
    for key in keys:
        if key != TEXT_KEY and key not in previous.keys:
            problems.append(f"no {key}")
        elif previous.shape(key) != layout.row_shape(key):
            problems.append(f"{key} rows of shape {previous.shape(key)}, expected {layout.row_shape(key)}")
    if problems:
        raise StoreError(
            f"store {directory} does not hold what this extraction writes ({'; '.join(problems)}): "
            "is it another kind, mode or duration? Append to a store made with the same settings"
        )
    stored = [{plan.columns[0]: item, plan.columns[1]: text} for item, text in zip(previous.ids, previous.captions)]
    rejected = [{c: r.get(c, "") for c in FAILURE_COLUMNS} for r in reported] + changes.new_rejected
    return Plan(plan.columns, changes.new_rows, plan.row_shapes, plan.text_shape, plan.store_format,
                rejected, previous=stored)


class StoreWriter:
    """One process's handle on a store being built; see the module docstring for the protocol."""

    def __init__(self, directory: str | Path, plan: Plan):
        self.paths = StorePaths(Path(directory))
        self.work = self.paths.partial
        self.plan = plan
        self.layout = plan.layout
        self.captions = plan.captions
        self._tensors: dict[str, torch.Tensor] = {}
        self._progress_fds: dict[str, int] = {}

    # ---- preparation (rank 0) -------------------------------------------------------------

    def prepare(self) -> str:
        """Creates or validates ``<name>.partial``.

        Returns 'new' (fresh files), 'resume' (earlier rows are kept) or 'finalizing' (an
        earlier run got as far as finalising; only `finalize` is left to do).
        """
        plan_file = self.work / "plan.json"
        if (self.work / "meta.json").is_file() and not plan_file.is_file():
            return "finalizing"
        if plan_file.is_file():
            saved = Plan.from_json(plan_file.read_text())
            difference = saved.first_difference(self.plan)
            if difference is not None:
                raise StoreError(
                    f"{self.work} holds an unfinished extraction of different inputs ({difference}). "
                    "Delete that directory to start over, or restore the inputs it was started with."
                )
            return "resume"
        self.work.mkdir(parents=True, exist_ok=True)
        for stale in self.work.glob("*.memmap"):
            stale.unlink()
        shutil.rmtree(self.work / "failures", ignore_errors=True)
        n = len(self.plan.rows)
        for key in (*self.layout.row_shapes, TEXT_TABLE_KEY):
            self._allocate(key, self._count(key))  # reserved now; the ranks write it
        index = self._allocate(TEXT_INDEX_KEY, n)
        position = {caption: i for i, caption in enumerate(self.captions)}
        index.copy_(torch.tensor([position[r.caption] for r in self.plan.rows], dtype=torch.int64))
        del index
        for name, size in (("rows", n), ("text", len(self.captions))):
            io.write_bytes(self.work / f"progress.{name}", bytes(size))
        (self.work / "failures").mkdir(exist_ok=True)
        io.write_text(plan_file, self.plan.to_json())  # written last: marks the preparation done
        return "new"

    # ---- writing (every rank) -------------------------------------------------------------

    def open(self) -> None:
        """Maps the preallocated files for writing (after rank 0's `prepare` and a barrier)."""
        for key in (*self.layout.row_shapes, TEXT_TABLE_KEY):
            self._tensors[key] = self._map(key, self._count(key), "r+")
        for name in ("rows", "text"):
            self._progress_fds[name] = os.open(self.work / f"progress.{name}", os.O_RDWR)

    def _count(self, key: str) -> int:
        return len(self.captions) if key == TEXT_TABLE_KEY else len(self.plan.rows)

    def _allocate(self, key: str, count: int, suffix: str = ".memmap") -> torch.Tensor:
        return _allocate(self.work / f"{key}{suffix}", self.layout.shape(key, count), self.layout.dtype(key))

    def _map(self, key: str, count: int, mode: str = "r") -> torch.Tensor:
        return MemoryMappedTensor.from_filename(self.work / f"{key}.memmap", dtype=self.layout.dtype(key),
                                                shape=torch.Size(self.layout.shape(key, count)), mode=mode)

    def close(self) -> None:
        self._tensors.clear()
        for fd in self._progress_fds.values():
            os.close(fd)
        self._progress_fds.clear()

    def row_status(self) -> torch.Tensor:
        return _read_progress(self.work / "progress.rows")

    def text_status(self) -> torch.Tensor:
        return _read_progress(self.work / "progress.text")

    def write_rows(self, indices: Sequence[int], features: Mapping[str, torch.Tensor]) -> None:
        """Writes rows ``indices`` of each per-row feature, then marks them done."""
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        for key in self.layout.row_shapes:
            target = self._tensors[key]
            target.index_copy_(0, index, features[key].detach().to("cpu", target.dtype))
        self._mark("rows", indices, DONE)

    def fail_row(self, index: int, reason: str, message: str) -> None:
        """Records why row ``index`` is skipped; it is dropped from the finished store."""
        row = self.plan.rows[index]
        record = {"id": row.id, "path": row.source, "reason": reason, "message": message}
        io.write_text(self.work / "failures" / f"{index}.json", json.dumps(record))
        self._mark("rows", [index], FAILED)

    def write_text(self, indices: Sequence[int], features: torch.Tensor) -> None:
        """Writes text-table rows ``indices`` (positions in ``captions``) and marks them done."""
        target = self._tensors[TEXT_TABLE_KEY]
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        target.index_copy_(0, index, features.detach().to("cpu", target.dtype))
        self._mark("text", indices, DONE)

    def _mark(self, name: str, indices: Sequence[int], status: int) -> None:
        fd = self._progress_fds[name]
        for start, length in _runs(sorted(indices)):
            os.pwrite(fd, bytes([status]) * length, start)

    # ---- finalisation (rank 0) ------------------------------------------------------------

    def finalize(self, overwrite: bool = False) -> Summary:
        """Turns the finished partial directory into the store; idempotent after a crash."""
        plan_file = self.work / "plan.json"
        if plan_file.is_file():
            status = self.row_status()
            pending = int((status == PENDING).sum()), int((self.text_status() == PENDING).sum())
            if any(pending):
                raise StoreError(f"{self.work}: {pending[0]} rows and {pending[1]} captions were not extracted; re-run")
            replacing = overwrite or bool(self.plan.appends)
            self._check_replaceable(replacing)  # before any file beside the store is written
            kept = torch.nonzero(status == DONE).flatten()
            failures = self._failure_records(status)
            io.write_text(self.work / "summary.json", json.dumps({
                "rows": self.plan.appends + len(kept),
                "failed": Counter(f["reason"] for f in failures),
                "rejected": Counter(r["reason"] for r in self.plan.rejected),
                "appended": len(kept) if self.plan.appends else None,
            }))
            tsv_io.write_table(self.paths.failures, FAILURE_COLUMNS, self.plan.rejected + failures)
            if len(kept) == 0 and not self.plan.appends:
                raise StoreError(
                    f"no row of {self.paths.directory} could be extracted; see {self.paths.failures}"
                )
            if not (self.work / MERGED_MARKER).is_file():
                self._compact(kept)
                if not self.plan.store_format.dedup_text:
                    self._expand_text(len(kept))
                if self.plan.appends:
                    self._merge_previous(len(kept))
            for merged in self.work.glob("*.memmap.merging"):
                os.replace(merged, merged.with_suffix(""))
            self._write_meta(self.plan.appends + len(kept))
            self._retire_previous(replacing)  # before the new tsv: never pair old data with it
            rows = self.plan.previous + [self.plan.rows[i].fields for i in kept.tolist()]
            tsv_io.write_table(self.paths.tsv, self.plan.columns, rows)
            # From here on only the cleanup and the rename are left: both are repeated by a
            # resumed run, which finds meta.json without plan.json ('finalizing').
            plan_file.unlink()
        self._cleanup()
        summary_data = json.loads((self.work / "summary.json").read_text())
        self._publish()
        return Summary(summary_data["rows"], Counter(summary_data["failed"]),
                       Counter(summary_data["rejected"]), summary_data.get("appended"))

    def _failure_records(self, status: torch.Tensor) -> list[dict[str, str]]:
        failed = torch.nonzero(status == FAILED).flatten().tolist()
        records = [json.loads((self.work / "failures" / f"{index}.json").read_text()) for index in failed]
        return [{k: record[k] for k in FAILURE_COLUMNS} for record in records]

    def _compact(self, kept: torch.Tensor) -> None:
        """Rewrites each per-row memmap with only the kept rows (one key at a time)."""
        n = len(self.plan.rows)
        if len(kept) == n:
            return
        for key in self.layout.per_row_keys:
            if (self.work / f"{key}.memmap").stat().st_size == len(kept) * self.layout.row_nbytes(key):
                continue  # compacted before an interruption
            self._gather(key, key, n, kept)

    def _expand_text(self, rows: int) -> None:
        """Reference layout: a text feature per row, gathered from the table of captions."""
        if not (self.work / f"{TEXT_KEY}.memmap").is_file():
            self._gather(TEXT_KEY, TEXT_TABLE_KEY, len(self.captions), self._map(TEXT_INDEX_KEY, rows))

    def _gather(self, key: str, source_key: str, source_count: int, rows: torch.Tensor) -> None:
        """Writes ``key``'s file as rows ``rows`` of ``source_key``'s (``source_count`` entries), a
        chunk at a time through a synced temp file: a kill leaves the old file or the new one."""
        tmp = self.work / f"{key}.memmap.tmp"
        source = self._map(source_key, source_count)
        target = self._allocate(key, len(rows), ".memmap.tmp")
        for start in range(0, len(rows), _CHUNK_ROWS):
            chunk = rows[start:start + _CHUNK_ROWS]
            target[start:start + len(chunk)] = source.index_select(0, chunk)
        del source, target
        _fsync(tmp)
        os.replace(tmp, self.work / f"{key}.memmap")

    def _merge_previous(self, new_rows: int) -> None:
        """Append mode: writes each file as the finished store's data followed by the new rows'
        (the new text indices shifted past the store's text table) into ``<key>.memmap.merging``,
        then the marker that they are complete. The store is still in place: it is moved aside
        only after the marker exists, and a resumed run skips straight to the renames."""
        previous = FeatureStore.open(self.paths.directory)
        if previous.ids != [row["id"] for row in self.plan.previous]:
            raise StoreError(f"store {self.paths.directory} changed since the append in {self.work} "
                             f"began; delete {self.work} and append again")
        table_offset = previous.column(TEXT_TABLE_KEY).shape[0] if self.plan.store_format.dedup_text else 0
        for key in self.layout.final_keys:
            old = previous.column(key)
            count = len(self.captions) if key == TEXT_TABLE_KEY else new_rows
            new = self._map(key, count)
            tmp = self.work / f"{key}.memmap.merging"
            target = self._allocate(key, len(old) + count, ".memmap.merging")
            for at, part, shift in ((0, old, 0), (len(old), new, table_offset if key == TEXT_INDEX_KEY else 0)):
                for start in range(0, len(part), _CHUNK_ROWS):
                    chunk = part[start:start + _CHUNK_ROWS]
                    target[at + start:at + start + len(chunk)] = chunk + shift if shift else chunk
            del old, new, target
            _fsync(tmp)
        io.write_text(self.work / MERGED_MARKER, "")

    def _write_meta(self, rows: int) -> None:
        """meta.json through tensordict itself, so `TensorDict.load_memmap` reads the store."""
        tensors = {}
        for key in self.layout.final_keys:
            count = rows
            if key == TEXT_TABLE_KEY:  # its entries: the captions, and an appended store's own
                count = (self.work / f"{key}.memmap").stat().st_size // self.layout.row_nbytes(key)
            tensors[key] = self._map(key, count, "r+")
        TensorDict(tensors, batch_size=[]).memmap_(self.work, existsok=True)
        written = json.loads((self.work / "meta.json").read_text())
        if sorted(k for k in written if isinstance(written[k], dict)) != sorted(tensors):
            raise StoreError(f"tensordict wrote an unexpected meta.json in {self.work}")

    def _cleanup(self) -> None:
        """Removes everything that is not part of the store; repeatable after a kill.

        What is kept comes from meta.json, not from this run's plan: a run resuming a killed
        finalisation may have been given other inputs, and must not delete the store's data.
        """
        meta = json.loads((self.work / "meta.json").read_text())
        stored = [k for k, v in meta.items() if isinstance(v, dict)]
        keep = {f"{k}.memmap" for k in stored} | {"meta.json", "summary.json"}
        (self.work / MERGED_MARKER).unlink(missing_ok=True)
        for path in self.work.iterdir():
            dropped = path.name.endswith(".memmap") and path.name not in keep
            # Temp files of writes a killed run did not finish (finalisation is rank 0's alone).
            stale = path.is_file() and path.name.endswith(".tmp")
            if dropped or stale:
                path.unlink()
        for name in ("progress.rows", "progress.text"):
            (self.work / name).unlink(missing_ok=True)
        for table in (self.paths.tsv, self.paths.failures):
            io.remove_stale_temps(table)
        shutil.rmtree(self.work / "failures", ignore_errors=True)

    def _check_replaceable(self, replace: bool) -> None:
        """Only a store may be replaced, and only when asked (``overwrite``, or an append)."""
        final = self.paths.directory
        if is_vacant(final):
            return
        if not is_store(final):
            raise StoreError(
                f"{final} exists but is not a feature store (no meta.json); it is never replaced, "
                "with overwrite=True neither: move it away, or write the store elsewhere"
            )
        if not replace:
            raise StoreError(f"{final} already exists; delete it or set overwrite=True")

    def _retire_previous(self, replace: bool) -> None:
        """Moves an existing store aside (``replace``), so no reader sees old and new mixed.

        The place it moves to is recorded first, in the new store's ``retired.txt``: `_publish`
        removes that directory and nothing else, also when a killed run is resumed.
        """
        final = self.paths.directory
        if is_vacant(final):  # an empty directory is replaced by the rename in `_publish`
            return
        self._check_replaceable(replace)
        record = self.work / RETIRED_RECORD
        if not record.is_file():
            io.write_text(record, f"{final.name}.old-{secrets.token_hex(4)}")
        retired = final.with_name(record.read_text())
        os.replace(final, retired)
        logging.info("moved the previous store %s aside to %s (removed once the new one is published)",
                     final, retired)

    def _publish(self) -> None:
        final = self.paths.directory
        os.replace(self.work, final)
        finish_publishing(final)
        logging.info("feature store ready: %s (+ %s)", final, self.paths.tsv.name)


def finish_publishing(store: Path) -> None:
    """Removes what publishing ``store`` leaves behind: the previous store it moved aside (the
    directory its ``retired.txt`` names, if that is a name the writer makes), the record and
    the summary. A run that finds them (the last one was killed after the rename) calls it."""
    record = store / RETIRED_RECORD
    if record.is_file():
        name = record.read_text()
        retired = store.with_name(name)
        if re.fullmatch(re.escape(store.name) + r"\.old-[0-9a-f]{8}", name) and retired.is_dir():
            shutil.rmtree(retired)
            logging.info("removed the previous store %s", retired)
        record.unlink()
    (store / "summary.json").unlink(missing_ok=True)


_CHUNK_ROWS = 64


def _allocate(path: Path, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled file of the tensor's size, mapped shared for writing.

    Its disk blocks are reserved up front: on a full disk this fails here with a clear error,
    instead of the process dying of SIGBUS later while writing rows through the mapping.
    """
    path.unlink(missing_ok=True)
    tensor = MemoryMappedTensor.empty(torch.Size(shape), dtype=dtype, filename=path)
    size = path.stat().st_size
    if size:
        with open(path, "rb+") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as error:
                if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    return tensor  # a file system without reservations: stays sparse
                del tensor
                path.unlink(missing_ok=True)
                raise io.disk_full_error(path, error, f"the store being built in {path.parent} "
                                         "is unfinished and is not visible as a store") from error
    return tensor


def _read_progress(path: Path) -> torch.Tensor:
    data = path.read_bytes()
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _runs(sorted_indices: Sequence[int]):
    """(start, length) of each run of consecutive integers."""
    for _, run in itertools.groupby(enumerate(sorted_indices), lambda pair: pair[1] - pair[0]):
        run = list(run)
        yield run[0][1], len(run)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
