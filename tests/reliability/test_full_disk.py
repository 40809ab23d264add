"""A full disk: every writer stops with a clear error naming the file, leaves nothing that looks
complete, and the run finishes exactly once there is space again.

The disk is a real small file system: a tmpfs the test mounts (and grows with `remount` to
"free space"). That needs root; elsewhere the scenarios that write through mmgin.io fall back
to a write hook raising ENOSPC from a real file object, and the others are skipped with the
reason.
"""

from __future__ import annotations

import errno
import math
import os
import subprocess
from pathlib import Path
from typing import IO

import pytest
import torch

from mmgin import io
from mmgin.data.store import StorePaths, is_complete
from mmgin.media.write import write_audio
from mmgin.train import checkpoint as ckpt

from . import harness

pytestmark = pytest.mark.usefixtures("scenario")
PAGE = 4096


class SmallDisk:
    """A tmpfs of ``size`` bytes at ``path``; `grow` is freeing space."""

    def __init__(self, path: Path):
        self.path = path

    def mount(self, size: int) -> str | None:
        self.path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.path)],
                                capture_output=True, text=True)
        return None if result.returncode == 0 else (result.stderr.strip() or f"exit {result.returncode}")

    def grow(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def fill(self) -> None:
        """Uses up every free byte with a filler file."""
        fd = os.open(self.path / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * PAGE)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
        finally:
            os.close(fd)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file())


class _FullFile:
    """A real file whose writes fail with ENOSPC once ``room`` bytes are used up."""

    def __init__(self, file: IO[bytes], room: list[int]):
        self._file, self._room = file, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room[0] -= size
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


class HookedDisk(SmallDisk):
    """The fallback without mount rights: a folder where mmgin.io's writes see a disk of
    ``size`` bytes (pages rounded as on tmpfs is not modelled); PyAV and memmaps bypass it."""

    def __init__(self, path: Path, monkeypatch):
        super().__init__(path)
        self._room = [0]
        builtin_open = open

        def hooked_open(file, mode="r", *args, **kwargs):
            handle = builtin_open(file, mode, *args, **kwargs)
            inside = Path(file).resolve().is_relative_to(self.path.resolve())
            return _FullFile(handle, self._room) if inside and "w" in mode else handle

        monkeypatch.setattr(io, "open", hooked_open, raising=False)

    def mount(self, size: int) -> None:
        self.path.mkdir()
        self._room[0] = size

    def grow(self, size: int) -> None:
        used = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        self._room[0] = size - used

    def fill(self) -> None:
        self._room[0] = 0

    def unmount(self) -> None:
        pass


@pytest.fixture
def small_disk(tmp_path, monkeypatch, request):
    """``small_disk(size)`` -> a mounted SmallDisk (or the HookedDisk fallback, when the test
    allows it with ``hook_ok=True``)."""
    disks = []

    def make(size: int, hook_ok: bool = False) -> SmallDisk:
        disk = SmallDisk(tmp_path / f"disk{len(disks)}")
        problem = disk.mount(size) if os.geteuid() == 0 else "not running as root"
        if problem is not None:
            if not hook_ok:
                pytest.skip(f"cannot mount a small tmpfs ({problem}); this scenario needs a real file system")
            disk.path.rmdir() if disk.path.exists() else None
            disk = HookedDisk(disk.path, monkeypatch)
            disk.mount(size)
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.unmount()


def assert_disk_full_error(error: BaseException, name: str) -> None:
    # (gin re-raises errors from a constructor with its own note appended, dropping `errno`)
    assert isinstance(error, io.DiskFullError), f"{type(error).__name__}: {error}"
    text = str(error)
    assert "no space to write" in text and "No space left on device" in text, text
    assert name in text and "Free space" in text, text


def test_training_on_a_full_disk_stops_clearly_and_resumes_exactly(example_workspace, uninterrupted, small_disk):
    """100 MB hold the first checkpoint (45 MB) and EMA snapshots, not the second checkpoint."""
    reference, _ = uninterrupted
    disk = small_disk(100 * 2**20, hook_ok=True)
    out = disk.path / "run"
    params = harness.train_params(example_workspace, out)
    with pytest.raises(OSError) as info:
        harness.run_in_process(harness.TRAIN_FILES, params)
    assert_disk_full_error(info.value, "ckpt_000000002.pth")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt_000000001.pth"]
    assert not [f for f in disk.files() if f.endswith(".tmp")], disk.files()
    assert io.load_torch(ckpt.checkpoint_path(out, 1))["iteration"] == 1

    disk.grow(400 * 2**20)
    harness.run_in_process(harness.TRAIN_FILES, params)
    assert harness.differences(reference, harness.run_outputs(out)) == []


def _store_pages(rows: int, captions: int) -> int:
    """tmpfs pages of a 16 kHz audio store's preallocated memmaps (bf16 text table)."""
    sizes = [rows * 250 * 20 * 4] * 2 + [captions * 77 * 1024 * 2, rows * 8]
    return sum(math.ceil(size / PAGE) for size in sizes)


@pytest.mark.parametrize("where,pages", [
    ("preallocation", _store_pages(10, 3) // 2),
    # Room for the preallocation, the run's small files and the null-text record (a 77 x 1024
    # float32 tensor: 77 pages + 1 of zip framing), not for the compaction of `mean` without the
    # failed row (44 pages).
    ("finalisation", _store_pages(10, 3) + 12 + 78),
])
def test_extraction_on_a_full_disk_stops_clearly_and_resumes(extraction_inputs, small_disk, where, pages):
    disk = small_disk(pages * PAGE)
    store = disk.path / "store"
    # In a forked process: a write through a memory map to a full disk would be a SIGBUS.
    params, run = harness.fork_extraction(extraction_inputs, store)
    assert run.join() == 1, f"exit code {run.process.exitcode}: {run.error}"
    error = run.error
    assert error.startswith("DiskFullError: [Errno 28] no space to write") and ".memmap" in error, error
    if where == "preallocation":
        assert "is unfinished and is not visible as a store" in error, error
    else:
        assert ".memmap.tmp" in error and (StorePaths(store).partial / "progress.rows").read_bytes().count(0) == 0
    assert not is_complete(store) and not store.exists() and not StorePaths(store).tsv.exists()

    disk.grow(16 * 2**20)
    harness.run_in_process(harness.EXTRACTION_FILES, params)
    assert harness.store_files(store) == extraction_inputs.reference


def test_flac_on_a_full_disk(small_disk):
    disk = small_disk(64 * 1024)
    target = disk.path / "samples" / "clip.flac"
    with pytest.raises(OSError) as info:
        write_audio(target, torch.sin(torch.arange(16000 * 30) * 0.1) * 0.5, 16000)
    assert_disk_full_error(info.value, str(target))
    assert disk.files() == []


def test_config_record_on_a_full_disk(example_workspace, small_disk):
    disk = small_disk(16 * PAGE, hook_ok=True)
    disk.fill()
    table = disk.path / "clips.tsv"
    with pytest.raises(OSError) as info:
        harness.run_in_process(["gin/partition_clips.gin"],
                       [f"AUDIO_DIR = '{example_workspace / 'audios'}'", f"OUTPUT_DIR = '{table}'"])
    assert_disk_full_error(info.value, "config.gin")
    assert [f for f in disk.files() if f != "filler"] == []
