"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

import torch


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """No room to write a file; nothing was written and any previous version is intact."""


def disk_full_error(
    path: str | os.PathLike, error: OSError,
    consequence: str = "nothing was written and any previous version of it is intact",
) -> OSError:
    """``error`` as a DiskFullError naming ``path`` when it says the disk is full, else itself."""
    if error.errno not in _DISK_FULL or isinstance(error, DiskFullError):
        return error
    return DiskFullError(
        error.errno, f"no space to write {path} ({error.strerror}); {consequence}. Free space on "
        "that disk (or point the output elsewhere) and re-run"
    )


def remove_stale_temps(path: str | os.PathLike, name_is_glob: bool = False) -> None:
    """Removes the temporary files ``atomic_path(path)`` leaves when its process is killed
    mid-write (SIGKILL skips the cleanup); with ``name_is_glob`` those of every file in
    ``path``'s folder whose name matches ``path``'s name as a glob pattern. Call it only where
    no other writer of those files can be running."""
    path = Path(path)
    name = path.name if name_is_glob else glob.escape(path.name)
    for stale in path.parent.glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` when the block succeeds.

    The temporary file is fsynced before the rename, and removed if the block raises (for
    example ENOSPC), so nothing that looks complete is ever left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide outputs from collaborators
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(error, OSError):
            clear = disk_full_error(path, error)
            if clear is not error:
                raise clear from error
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _WriteRecorder:
    """A binary file that remembers why a write failed: torch.save turns an OSError from the
    file (a full disk) into a RuntimeError that no longer says what went wrong."""

    def __init__(self, file: IO[bytes]):
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def write_with(path: str | os.PathLike, writer: Callable[[IO[bytes]], Any]) -> None:
    """Writes ``path`` atomically through ``writer(binary_file)``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recorder = _WriteRecorder(f)
        try:
            writer(recorder)
        except Exception as error:
            if recorder.error is not None and error is not recorder.error:
                raise recorder.error from error
            raise


def write_text(path: str | os.PathLike, text: str) -> None:
    write_with(path, lambda f: f.write(text.encode("utf-8")))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    write_with(path, lambda f: f.write(data))


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    write_with(path, lambda f: torch.save(obj, f))


_NAME_BYTES = 200  # room for a suffix within the usual 255-byte limit on a file name


def safe_file_name(name: str) -> str:
    """A file name for ``name`` (an id from a user's table) that stays inside its folder.

    A plain name is kept as it is. Otherwise path separators, control characters and '%' are
    %-escaped (UTF-8 bytes), '', '.' and '..' are escaped whole, and a name too long for the
    file system is cut and ends with '%~' and a hash of the whole. Escaped names contain '%'
    and plain ones do not, so distinct ids always get distinct files.
    """
    def plain(char: str) -> bool:
        return char not in "/\\%" and char.isprintable()

    if not name:
        return "%"
    if name in (".", ".."):
        return "%2E" * len(name)
    escaped = "".join(c if plain(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name)
    if len(escaped.encode()) <= _NAME_BYTES:  # a plain name is its own escape
        return escaped
    digest = hashlib.sha1(name.encode()).hexdigest()[:16]
    head = escaped.encode()[: _NAME_BYTES - len(digest) - 2].decode(errors="ignore")
    return f"{head}%~{digest}"


def distinct_file_names(ids: Sequence[str]) -> list[str]:
    """A file name per item (``safe_file_name`` of its id) that no other item shares.

    Unique ids keep their plain names. An id's first item does too; each later item gets
    ``-<k>`` (k = 1, 2, ...; the next k whose name no id has), the way av-benchmark names
    several samples of one clip. Depends only on the ordered ids, so every rank agrees.
    """
    names = [safe_file_name(item) for item in ids]
    plain, used, repeats, distinct = set(names), set(), {}, []
    for name in names:
        if name in used:
            k = repeats.get(name, 0) + 1
            while f"{name}-{k}" in plain or f"{name}-{k}" in used:
                k += 1
            repeats[name] = k
            name = f"{name}-{k}"
        used.add(name)
        distinct.append(name)
    return distinct


def load_torch(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """torch.load restricted to tensors and plain containers (never arbitrary pickles).

    ``mmap`` maps the tensors from the file instead of reading them into memory (zip-format
    files only, i.e. files torch.save wrote): every rank of a resumed run then shares the
    page cache instead of holding its own copy of a multi-GB checkpoint.
    """
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def unreadable_reason(error: Exception) -> str:
    """Why torch could not read a file, without torch's advice to load it unsafely."""
    text = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text:
        return "not a file of tensors that loads safely (weights-only)"
    return f"{type(error).__name__}: {text[:200]}"
