"""Runs that meet in one output (issue 17 §4, §11).

A second training run or extraction started in a live run's output stops before it writes
anything, naming the holder; a dry run there changes nothing; the lock a SIGKILLed run leaves
is taken over by the next run. The live run is a forked process held still with SIGSTOP while
the others try (so they meet it mid-run every time), then let go: it must finish exactly as an
uninterrupted run does.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from mmgin import cli, run_lock
from mmgin.data.store import StorePaths
from mmgin.run_lock import OutputLockedError

from . import harness


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: contents, inode and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_ino,
                                       p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def holder_pid(output: Path) -> int | None:
    """The pid the output's lock file records (None while there is none, or it is being written)."""
    try:
        return json.loads(run_lock.lock_file(output).read_text())["pid"]
    except (ValueError, KeyError):
        return None


def others_meet(run: harness.Forked, output: Path, files: list[str], params: list[str]) -> bool:
    """With ``run`` holding ``output`` and stopped: a second run is refused naming it, a dry run
    succeeds, and neither changes a file beside or inside the output. Lets ``run`` go on."""
    assert harness.wait_for(lambda: holder_pid(output) == run.process.pid, run)
    os.kill(run.process.pid, signal.SIGSTOP)
    try:
        before = snapshot(output.parent)
        holder = (rf"{re.escape(str(output))} is in use by another run: pid {run.process.pid} "
                  rf"on host {re.escape(socket.gethostname())} ")
        with pytest.raises(OutputLockedError, match=holder):
            cli.run(files, params, [str(harness.REPO)], dry_run=False)
        assert cli.run(files, params, [str(harness.REPO)], dry_run=True) == 0
        return snapshot(output.parent) == before
    finally:
        os.kill(run.process.pid, signal.SIGCONT)


def test_a_second_training_run_and_a_dry_run_meet_a_live_run(example_workspace, uninterrupted, tmp_path, tally):
    """Two training runs in one directory used to corrupt each other (one died on the other's
    temp-file cleanup), and a dry run rewrote the live run's config files."""
    reference, _ = uninterrupted
    out = tmp_path / "run"
    params = harness.train_params(example_workspace, out)
    run = harness.Forked(functools.partial(harness.run_in_process, harness.TRAIN_FILES, params))
    unchanged = others_meet(run, out, harness.TRAIN_FILES, params)
    assert run.join() == 0, run.error
    lost = harness.differences(reference, harness.run_outputs(out))
    lock_gone = not run_lock.lock_file(out).exists()
    tally.add("training: a second run and a dry run in a live run's directory", unchanged and not lost and lock_gone,
              len(lost))
    assert unchanged and not lost and lock_gone, lost


def test_a_second_extraction_and_a_dry_run_meet_a_live_one(extraction_inputs, tmp_path, tally):
    """Two extractions into one store used to crash one of them."""
    store = tmp_path / "stores" / "store"
    params, run = harness.fork_extraction(extraction_inputs, store)
    unchanged = others_meet(run, store, harness.EXTRACTION_FILES, params)
    assert run.join() == 0, run.error
    lost = harness.store_differences(extraction_inputs.reference, store)
    tidy = sorted(p.name for p in store.parent.iterdir()) == ["store", "store.failures.tsv", "store.tsv"]
    tally.add("extraction: a second run and a dry run into a store being built", unchanged and not lost and tidy,
              len(lost))
    assert unchanged and not lost and tidy, lost


def test_the_lock_of_a_killed_extraction_is_taken_over(extraction_inputs, tmp_path, tally):
    store = tmp_path / "stores" / "store"
    progress = StorePaths(store).partial / "progress.rows"
    params, run = harness.fork_extraction(extraction_inputs, store)
    harness.wait_for(lambda: progress.is_file() and progress.read_bytes().count(0) <= len(progress.read_bytes()) - 2,
                     run)
    assert run.sigkill(), "the extraction ended before the kill"
    assert holder_pid(store) == run.process.pid  # the dead run's lock is still there
    harness.run_in_process(harness.EXTRACTION_FILES, params)
    lost = harness.store_differences(extraction_inputs.reference, store)
    lock_gone = not run_lock.lock_file(store).exists()
    tally.add("extraction: the lock of a SIGKILLed run is taken over", not lost and lock_gone, len(lost),
              "2+ of 10 rows done")
    assert not lost and lock_gone, lost
