"""One advisory lock per output, so two runs never write one run directory or store at once.

The lock is `fcntl.flock` on `.<name>.lock` beside the output, not inside it: an extraction
renames its `.partial` work directory to the store, which must not publish a lock file, and a
store's cleanup must not meet one. The kernel drops a flock when its holder dies however it
dies (SIGKILL included), so the file a killed run leaves is simply taken over by the next run;
over NFS the server does the same for a client that is gone. The file records its holder (host,
pid, start time, command) for the message a second run prints. It is written in place, not by
rename as other files are: the lock belongs to the file's inode. A released lock's file is
removed; a run that opened it just before then sees another inode at the path and retries.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from absl import logging

_held: dict[Path, list[int]] = {}  # lock file -> [descriptor, nesting depth], in this process


class OutputLockedError(RuntimeError):
    """Another live run holds the output's lock; nothing of this run was written there."""


def lock_file(output: str | os.PathLike) -> Path:
    """The lock file of ``output`` (resolved, so two spellings or a symlink share one lock)."""
    output = Path(output).resolve()
    return output.parent / f".{output.name}.lock"


def acquire(output: str | os.PathLike) -> Path:
    """Takes the lock of ``output`` for this process (again: nested) and returns its file.

    Raises OutputLockedError naming the holder when another process holds it.
    """
    path = lock_file(output)
    if path in _held:
        _held[path][1] += 1
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise OutputLockedError(_locked_message(Path(output), path, holder)) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # released and removed between our open and our flock: try the new file
    previous = _read(fd)
    if previous:
        logging.warning("took over %s from %s, which ended without releasing it", path, _describe(previous))
    _write(fd, {"host": socket.gethostname(), "pid": os.getpid(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.executable).name, *sys.argv])})
    _held[path] = [fd, 1]
    return path


def release(path: Path) -> None:
    """Gives back a lock `acquire` returned; the outermost release removes its file."""
    entry = _held[path]
    entry[1] -= 1
    if entry[1]:
        return
    del _held[path]
    try:
        path.unlink(missing_ok=True)  # while still locked: nobody can be holding this file
    finally:
        os.close(entry[0])


def _same_file(fd: int, path: Path) -> bool:
    try:
        current = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


def _read(fd: int) -> dict | None:
    text = os.pread(fd, 1 << 16, 0).decode(errors="replace").strip()
    try:
        record = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _write(fd: int, record: dict) -> None:
    """Best effort: the flock is the lock, the record only names it in messages. A full disk
    must fail on the run's first real file (its config.gin), with the message for that."""
    data = (json.dumps(record) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        os.ftruncate(fd, 0)


def _describe(record: dict) -> str:
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
            f"(since {record.get('since', '?')}: {record.get('command', '?')})")


def _locked_message(output: Path, path: Path, record: dict | None) -> str:
    who = _describe(record) if record else "a process that has not yet recorded itself"
    elsewhere = ""
    if record and record.get("host") != socket.gethostname():
        elsewhere = " That host is not this one: check there whether the run is still going."
    return (f"{output} is in use by another run: {who}.{elsewhere} Wait for that run to end or "
            f"stop it; its lock ({path}) goes when its process ends, however it ends.")


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep a lock alive after its parent died."""
    for fd, _ in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)
