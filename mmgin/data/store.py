"""Feature stores: a TensorDict memmap directory plus a sibling tsv, one row per clip.

Layout on disk (the reference layout, so stores move between the reference and mmgin)::

    <parent>/<name>/meta.json            written by tensordict (keys, shapes, dtypes)
    <parent>/<name>/<key>.memmap         raw row-major tensor data, one file per key
    <parent>/<name>.tsv                  row i of every memmap belongs to tsv row i
    <parent>/<name>.failures.tsv         written by mmgin's extractors: id, path, reason

Files beside the directory are named from its full name (``x.v2/`` has ``x.v2.tsv``; the
reference names the table from the stem, which is the same name unless the name has a dot).
Opening a store checks meta.json and every memmap file's size against it, and each read
checks that no file changed size since: a file truncated under a running job is a StoreError
naming it instead of a bus error.

Video stores hold ``mean``, ``std`` (VAE posterior, [N, L, C]), ``clip_features`` [N, 64, 1024],
``sync_features`` [N, 192, 768] and ``text_features`` [N, 77, 1024] with tsv columns id, label;
audio stores hold ``mean``, ``std`` and ``text_features`` with columns id, caption.

Beyond the reference, mmgin can store clip/sync/text features in bfloat16 and keep the text
features as a table of distinct captions (``text_table`` [U, 77, 1024] + ``text_index`` [N]):
VGGSound has ~310 labels for ~180k clips, so this cuts the bytes read per sample by more than
half. The reader accepts every layout and returns float32, or the storage dtype for the training
loader (features then become float32 on the GPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from tensordict import TensorDict
from torch.utils.data import get_worker_info

from mmgin import precision
from mmgin.data import tsv as tsv_io

VIDEO_COLUMNS = ("id", "label")
AUDIO_COLUMNS = ("id", "caption")
# The clip table PartitionClips writes and ExtractAudioFeatures reads: a clip of a longer file.
CLIP_COLUMNS = ("id", "name", "start_sample", "end_sample")
LATENT_KEYS = ("mean", "std")
VIDEO_FEATURE_KEYS = ("clip_features", "sync_features")
TEXT_KEY = "text_features"
TEXT_TABLE_KEY = "text_table"
TEXT_INDEX_KEY = "text_index"
# What meta.json may name ('torch.float32', ...): feature dtypes and the int64 text index.
META_DTYPES = {str(dtype): dtype for dtype in (*precision.DTYPES.values(), torch.int64)}
# Keys whose dtype no StoreFormat changes: the VAE posteriors stay float32 (training samples
# latents from them) and the text index is int64.
FIXED_DTYPES = {"mean": torch.float32, "std": torch.float32, TEXT_INDEX_KEY: torch.int64}


class StoreError(ValueError):
    """A store that cannot be read as asked; the message names the files involved."""


@dataclass(frozen=True)
class StoreFormat:
    """How a writer lays out a store.

    ``feature_dtype`` ('bf16', 'fp32' or 'fp16', the words of mmgin.precision) applies to clip,
    sync and text features (not to `FIXED_DTYPES`). ``dedup_text`` stores one text feature per
    distinct caption plus an index per row. ``StoreFormat.reference()`` is the reference's
    layout (float32, a text feature per row), readable by the reference trainer.
    """

    feature_dtype: str = "bf16"
    dedup_text: bool = True

    def __post_init__(self) -> None:
        precision.check("feature_dtype", self.feature_dtype)

    @classmethod
    def reference(cls) -> "StoreFormat":
        return cls("fp32", False)

    @classmethod
    def of(cls, dtype: torch.dtype, dedup_text: bool) -> "StoreFormat":
        return cls(precision.NAMES[dtype], dedup_text)

    @property
    def dtype(self) -> torch.dtype:
        return precision.dtype(self.feature_dtype)


@dataclass(frozen=True)
class StoreLayout:
    """Each file of a store a writer makes: the per-row shape and dtype of every key, from the
    format and the feature shapes. Per-row features are ``row_shapes``' keys; the text is a
    table of distinct captions (``text_table`` + ``text_index``) while writing, and stays so or
    becomes ``text_features`` (a row each) per ``store_format.dedup_text``."""

    row_shapes: Mapping[str, tuple[int, ...]]
    text_shape: tuple[int, ...]
    store_format: StoreFormat

    def dtype(self, key: str) -> torch.dtype:
        return FIXED_DTYPES.get(key, self.store_format.dtype)

    def row_shape(self, key: str) -> tuple[int, ...]:
        if key in (TEXT_KEY, TEXT_TABLE_KEY):
            return tuple(self.text_shape)
        return () if key == TEXT_INDEX_KEY else tuple(self.row_shapes[key])

    def shape(self, key: str, count: int) -> tuple[int, ...]:
        return (count,) + self.row_shape(key)

    def row_nbytes(self, key: str) -> int:
        return math.prod(self.row_shape(key)) * self.dtype(key).itemsize

    @property
    def per_row_keys(self) -> tuple[str, ...]:
        """The files with an entry per planned row while writing."""
        return (*self.row_shapes, TEXT_INDEX_KEY)

    @property
    def final_keys(self) -> tuple[str, ...]:
        text = (TEXT_TABLE_KEY, TEXT_INDEX_KEY) if self.store_format.dedup_text else (TEXT_KEY,)
        return (*self.row_shapes, *text)


@dataclass(frozen=True)
class StorePaths:
    """Where a store named by its directory keeps its files: each named from the directory's
    full name (``x.v2/`` has ``x.v2.tsv``), so no two stores in a folder share a file."""

    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name

    def beside(self, suffix: str) -> Path:
        return self.directory.parent / f"{self.name}{suffix}"

    @property
    def tsv(self) -> Path:
        return self.beside(".tsv")

    @property
    def partial(self) -> Path:
        return self.beside(".partial")

    @property
    def failures(self) -> Path:
        return self.beside(".failures.tsv")

    def refuse_stem_named(self, *files: Path) -> None:
        """Refuses a dotted store whose file is missing while the file named from the stem
        exists (``x.tsv`` for ``x.v2``): the reference, and mmgin before, named tables so. That
        file may be this store's or the table of a store ``x``: pairing them silently could
        serve one store's rows with another's features."""
        stem = self.directory.stem
        for path in files:
            old = path.with_name(stem + path.name[len(self.name):])
            if old != path and not path.exists() and old.exists():
                raise StoreError(
                    f"{path} of store {self.directory} is missing, but {old} exists: tables used to "
                    f"be named from the directory's stem. If {old.name} belongs to {self.name}, rename "
                    f"it to {path.name}; if it is the table of a store {stem}, keep it and re-extract "
                    f"{self.name}"
                )


def is_store(directory: str | Path) -> bool:
    """True for a feature store's directory (it has meta.json), finished or without its tsv:
    the only kind of directory `overwrite=True` may replace."""
    path = Path(directory)
    return path.is_dir() and not path.is_symlink() and (path / "meta.json").is_file()


def is_complete(directory: str | Path) -> bool:
    """True when a finished store (directory with meta.json, and its tsv) exists."""
    return is_store(directory) and StorePaths(Path(directory)).tsv.is_file()


def is_vacant(directory: str | Path) -> bool:
    """True when a store may be written at ``directory``: nothing is there, or an empty
    directory (made ahead of the run, as with ``mkdir -p``), which the store then replaces."""
    path = Path(directory)
    return not path.exists() or (path.is_dir() and not path.is_symlink() and next(path.iterdir(), None) is None)


def read_meta(directory: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of each tensor meta.json lists; a file that cannot be parsed, or an entry
    without a valid shape or a known dtype, is a StoreError naming meta.json."""
    path = Path(directory) / "meta.json"
    fix = "copy the store again or re-extract it"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path} is unreadable ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path} is not a tensordict meta.json (a JSON object); {fix}")
    tensors = {}
    for key, entry in meta.items():
        if not isinstance(entry, dict):
            continue  # the tensordict's own fields (shape, device, _type, ...)
        shape, name = entry.get("shape"), entry.get("dtype")
        dtype = META_DTYPES.get(name) if isinstance(name, str) else None
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)) or dtype is None:
            raise StoreError(
                f"{path}: entry {key!r} has shape {shape!r} and dtype {name!r}; expected a "
                f"list of sizes and one of {', '.join(META_DTYPES)}. {fix[0].upper()}{fix[1:]}"
            )
        tensors[key] = (tuple(shape), dtype)
    return tensors


class FeatureStore:
    """Read access to one store, in any layout; rows come back as float32 tensors.

    The memmaps are opened lazily in each process (DataLoader workers included) and are never
    copied into RAM: a batch read gathers only its rows.
    """

    def __init__(self, memmap_dir: str | Path, tsv: str | Path | None = None):
        self.memmap_dir = Path(memmap_dir)
        paths = StorePaths(self.memmap_dir)
        if tsv is None:
            paths.refuse_stem_named(paths.tsv)
        self.tsv_path = Path(tsv) if tsv is not None else paths.tsv
        self._check_exists()
        self._sizes: dict[Path, int] = {}
        self._td: TensorDict | None = None
        td = self._tensors()
        self.keys = tuple(sorted(td.keys()))
        self.kind = "video" if "clip_features" in self.keys else "audio"
        columns = VIDEO_COLUMNS if self.kind == "video" else AUDIO_COLUMNS
        rows = tsv_io.read_table(self.tsv_path, required=columns)
        self.ids = [row["id"] for row in rows]
        self.captions = [row[columns[1]] for row in rows]
        self.dedup_text = TEXT_TABLE_KEY in self.keys
        self._validate(td)

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        """Opens ``path`` (the store directory; its tsv sits beside it)."""
        return cls(path)

    def _check_exists(self) -> None:
        partial = StorePaths(self.memmap_dir).partial
        if not (self.memmap_dir / "meta.json").is_file():
            hint = (
                f" An unfinished extraction is in {partial}: re-run it to finish."
                if partial.exists() else " Check the path, or run the extraction program first."
            )
            raise StoreError(f"feature store {self.memmap_dir} not found (no meta.json).{hint}")
        if not self.tsv_path.is_file():
            raise StoreError(
                f"the table {self.tsv_path} of store {self.memmap_dir} is missing; a store is the "
                "directory plus its tsv (copy both)"
            )

    def _file_sizes(self) -> dict[Path, int]:
        """Every memmap file holds exactly the bytes meta.json promises (checked before mapping:
        tensordict maps a short file by growing it with zeros, which would rewrite the store and
        serve zeros; a file of another size holds other data than meta.json describes, e.g.
        another dtype or shape). Returns each file's size."""
        sizes = {}
        for key, (shape, dtype) in read_meta(self.memmap_dir).items():
            path = self.memmap_dir / f"{key}.memmap"
            expected = math.prod(shape) * dtype.itemsize
            size = path.stat().st_size if path.is_file() else 0
            if size != expected:
                cause = ("truncated or missing (an interrupted copy?)" if size < expected else
                         "longer than its data (another dtype or shape than meta.json says?)")
                raise StoreError(
                    f"{path} is {size} bytes; {self.memmap_dir / 'meta.json'} (shape {list(shape)}, "
                    f"{dtype}) expects {expected}. The file is {cause}: copy the store again or re-extract it"
                )
            sizes[path] = size
        return sizes

    def check_files(self) -> None:
        """Raises a StoreError naming the first memmap file whose size changed since the store
        was opened: a file truncated under a running job would otherwise kill the reader with
        SIGBUS (a bus error, naming nothing) at its first access past the new end."""
        for path, size in self._sizes.items():
            try:
                now = path.stat().st_size
            except OSError as e:
                now, detail = 0, f"gone ({type(e).__name__})"
            else:
                detail = f"now {now} bytes"
            if now != size:
                raise StoreError(
                    f"{path} of store {self.memmap_dir} is {detail}, {size} when this job opened it: "
                    "something rewrote or truncated the store while it was being read. Stop that, "
                    "restore the store (copy it again or re-extract), then resume the job"
                )

    def _tensors(self) -> TensorDict:
        if self._td is None:
            self._sizes = self._file_sizes()  # each process (a DataLoader worker too) checks before mapping
            self._td = TensorDict.load_memmap(self.memmap_dir)
        return self._td

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_td"] = None  # each process maps the files itself
        return state

    def _validate(self, td: TensorDict) -> None:
        needed = list(LATENT_KEYS) + (list(VIDEO_FEATURE_KEYS) if self.kind == "video" else [])
        needed += [TEXT_TABLE_KEY, TEXT_INDEX_KEY] if self.dedup_text else [TEXT_KEY]
        missing = [k for k in needed if k not in self.keys]
        if missing:
            raise StoreError(
                f"store {self.memmap_dir} lacks {', '.join(missing)} (has {', '.join(self.keys)})"
            )
        for key in self.keys:
            allowed = (FIXED_DTYPES[key],) if key in FIXED_DTYPES else tuple(precision.DTYPES.values())
            if td[key].dtype not in allowed:
                raise StoreError(
                    f"{self.memmap_dir / 'meta.json'} gives {key} dtype {td[key].dtype}; a store holds it "
                    f"as {' or '.join(str(d) for d in allowed)}. Was meta.json edited? Copy the store "
                    "again or re-extract it"
                )
        n = len(self.ids)
        for key in self.row_keys:
            rows = td[key].shape[0]
            if rows != n:
                relation = "shorter than" if rows < n else "longer than"
                raise StoreError(
                    f"{self.memmap_dir / (key + '.memmap')} has {rows} rows, {relation} its table "
                    f"{self.tsv_path} ({n} rows); they must be aligned row for row. Re-extract, or "
                    "pair the memmap directory with the tsv it was written with."
                )
        if self.dedup_text:
            index = td[TEXT_INDEX_KEY]
            if n and (int(index.min()) < 0 or int(index.max()) >= td[TEXT_TABLE_KEY].shape[0]):
                raise StoreError(f"{self.memmap_dir}: text_index points outside text_table")

    @property
    def row_keys(self) -> tuple[str, ...]:
        """Keys with one entry per row (the text table is shared between rows)."""
        return tuple(k for k in self.keys if k != TEXT_TABLE_KEY)

    def __len__(self) -> int:
        return len(self.ids)

    def shape(self, key: str) -> tuple[int, ...]:
        """Per-row shape of a feature (``text_features`` also for a deduplicated store)."""
        td = self._tensors()
        if key == TEXT_KEY and self.dedup_text:
            return tuple(td[TEXT_TABLE_KEY].shape[1:])
        return tuple(td[key].shape[1:])

    def dtype(self, key: str) -> torch.dtype:
        td = self._tensors()
        return td[TEXT_TABLE_KEY if key == TEXT_KEY and self.dedup_text else key].dtype

    def column(self, key: str) -> torch.Tensor:
        """The memory-mapped tensor of one key, in its storage dtype (not loaded into RAM)."""
        self.check_files()
        return self._tensors()[key]

    def read(self, indices: torch.Tensor, as_float: bool = True) -> dict[str, torch.Tensor]:
        """Rows ``indices`` (int64, ideally sorted) of every feature: float32, or with
        ``as_float=False`` in the storage dtype (what the training loader moves: bf16 features
        stay half the bytes until the GPU converts them).

        Keys: ``mean``, ``std``, ``text_features`` and, for video stores, ``clip_features`` and
        ``sync_features``.
        """
        self.check_files()
        td = self._tensors()
        indices = indices.to(torch.int64)
        keys = LATENT_KEYS + (VIDEO_FEATURE_KEYS if self.kind == "video" else ())
        out = {key: _gather(td[key], indices, as_float) for key in keys}
        if self.dedup_text:
            table_rows = td[TEXT_INDEX_KEY].index_select(0, indices).to(torch.int64)
            unique, inverse = torch.unique(table_rows, return_inverse=True)
            rows = _gather(td[TEXT_TABLE_KEY], unique, as_float)
            shape = (len(indices),) + rows.shape[1:]
            out[TEXT_KEY] = torch.index_select(rows, 0, inverse, out=batch_tensor(shape, rows.dtype))
        else:
            out[TEXT_KEY] = _gather(td[TEXT_KEY], indices, as_float)
        return out

    def bytes_read(self, indices: torch.Tensor) -> int:
        """Distinct bytes of storage that reading rows ``indices`` touches: each row's own data,
        plus each text-table row once however many of the rows share it. Over an epoch this is
        what must come from disk or the page cache."""
        td = self._tensors()
        total = sum(_row_nbytes(td[key]) for key in self.row_keys) * len(indices)
        if self.dedup_text:
            distinct = torch.unique(td[TEXT_INDEX_KEY].index_select(0, indices.to(torch.int64)))
            total += _row_nbytes(td[TEXT_TABLE_KEY]) * len(distinct)
        return total

    def describe(self) -> str:
        dtypes = sorted({str(self.dtype(k)).replace("torch.", "") for k in self.keys if k != TEXT_INDEX_KEY})
        text = "deduplicated text" if self.dedup_text else "text per row"
        return f"{self.kind} store {self.memmap_dir} ({len(self)} rows, {'/'.join(dtypes)}, {text})"


def _row_nbytes(tensor: torch.Tensor) -> int:
    return tensor[0:1].numel() * tensor.element_size() if tensor.shape[0] else 0


_allocation = threading.local()


@contextlib.contextmanager
def pinned_batches():
    """Within it, this thread's ``batch_tensor`` allocates page-locked memory: loader threads
    gather rows straight into buffers the GPU copy can read, with no pinning copy after."""
    _allocation.pinned = True
    try:
        yield
    finally:
        _allocation.pinned = False


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker it lives in shared memory,
    so sending it to the main process needs no extra copy (as default_collate does); inside
    ``pinned_batches`` it is page-locked."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype, pin_memory=getattr(_allocation, "pinned", False))
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _gather(tensor: torch.Tensor, indices: torch.Tensor, as_float: bool) -> torch.Tensor:
    """Gathers rows into a fresh (shared-memory, in a worker) tensor with one copy: float32
    (the cast fused with the copy) or the storage dtype."""
    dtype = torch.float32 if as_float else tensor.dtype
    out = batch_tensor((len(indices),) + tuple(tensor.shape[1:]), dtype)
    if len(indices) and _is_contiguous_run(indices):
        start = int(indices[0])
        out.copy_(tensor[start:start + len(indices)])
    elif dtype == tensor.dtype:
        torch.index_select(tensor, 0, indices, out=out)
    else:
        out.copy_(tensor.index_select(0, indices))
    return out


def _is_contiguous_run(indices: torch.Tensor) -> bool:
    return int(indices[-1]) - int(indices[0]) == len(indices) - 1 and bool((indices.diff() == 1).all())
