"""SIGKILL at random points: training resumes bit-identically, a checkpoint being written when
the kill lands never replaces the previous one, and a killed extraction resumes to the same
store as an uninterrupted run.

Kill points are drawn at random from the run's progress (after checkpoint k / after row k is
written, plus a random delay), so they land in start-up, steps, validation, checkpoint and
EMA-snapshot writes, the end of training, and extraction's planning, rows and finalisation.
The seed is printed on failure; MMGIN_RELIABILITY_SEED=<seed> replays it. `-m slow` runs
longer soaks.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import pytest
import torch

from mmgin.data import tsv as tsv_io
from mmgin.data.store import StorePaths
from mmgin.train import checkpoint as ckpt

from .harness import (
    EXTRACTION_FILES,
    STEPS,
    TRAIN_FILES,
    Forked,
    differences,
    extraction_params,
    intra_op_threads,
    run_forked,
    run_in_process,
    run_outputs,
    store_differences,
    store_files,
    train_params,
    trial_rng,
    wait_for,
)


class Attempts:
    """Attempt numbers until ``trials`` kills landed (the caller counts them in ``landed``); a
    kill that comes after the run ended is retried, at most three attempts per trial."""

    def __init__(self, trials: int):
        self.trials, self.landed = trials, 0

    def __iter__(self):
        for attempt in range(3 * self.trials):
            if self.landed == self.trials:
                return
            yield attempt


# --------------------------------------------------------------------------------- training
def training_phase(out: Path) -> str:
    """Where a killed run was, judged by what it left."""
    reached = [int(p.stem.split("_")[1]) for p in ckpt.list_checkpoints(out)]
    if (out / "ema_final.pth").exists():
        return "finished"
    if not reached:
        return "start-up or step 1"
    return f"after checkpoint {max(reached)}"


@pytest.mark.parametrize("trials", [3, pytest.param(12, marks=pytest.mark.slow)])
def test_training_killed_at_random_points_resumes_bit_identically(
        example_workspace, uninterrupted, tmp_path, tally, trials):
    reference, seconds = uninterrupted
    step_seconds = seconds / STEPS
    rng, seed = trial_rng()
    failures, attempts = [], Attempts(trials)
    for attempt in attempts:
        out = tmp_path / f"attempt{attempt}"
        params = train_params(example_workspace, out)
        # A kill point: some time after checkpoint k appeared (k = 0: after the start; k =
        # STEPS: during the end of the run, after its last checkpoint).
        after = rng.randint(0, STEPS)
        run = Forked(functools.partial(run_in_process, TRAIN_FILES, params))
        wait_for(lambda: after == 0 or ckpt.checkpoint_path(out, after).exists(), run)
        time.sleep(rng.uniform(0.0, step_seconds))
        if not run.sigkill():
            continue
        attempts.landed += 1
        phase = training_phase(out)
        run_in_process(TRAIN_FILES, params)  # the same command again: it resumes by itself
        lost = differences(reference, run_outputs(out))
        tally.add("training: SIGKILL at a random point, then resume", not lost, len(lost), phase)
        if lost:
            failures.append(f"attempt {attempt} (killed {phase}): {lost[:5]}")
    assert attempts.landed == trials, f"seed {seed}: {attempts.landed} of {trials} kills landed before the run ended"
    assert not failures, f"seed {seed}: {failures}"


def write_big_checkpoint(output_dir: Path) -> None:
    """Checkpoint 5 of ~130 MB: large enough that its write takes a while to kill."""
    network = {f"w{i}": torch.full((16384,), float(i)) for i in range(2000)}
    ckpt.save(output_dir, 5, {"iteration": 5, "network": network})


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(example_workspace, uninterrupted, tmp_path, tally):
    """A real SIGKILL while the atomic temp file is being written, plus a truncated newer
    checkpoint (what a non-atomic copy leaves): the run resumes from the last good one."""
    reference, _ = uninterrupted
    out = tmp_path / "run"
    run_in_process(TRAIN_FILES, train_params(example_workspace, out, **{"Train.num_iterations": 4}))
    folder = out / ckpt.CHECKPOINT_DIR
    writer = Forked(functools.partial(write_big_checkpoint, out))
    temp_files = lambda: list(folder.glob(".ckpt_000000005.pth.*.tmp"))  # noqa: E731
    started = wait_for(lambda: any(p.stat().st_size > 0 for p in temp_files()), writer)
    landed = writer.sigkill()
    assert started and landed, "the kill did not land during the checkpoint write"
    assert not ckpt.checkpoint_path(out, 5).exists() and temp_files()
    good = ckpt.checkpoint_path(out, 4).read_bytes()
    ckpt.checkpoint_path(out, 6).write_bytes(good[: len(good) // 3])  # truncated, newest by name

    found = ckpt.load_latest(out)
    assert found is not None and found[0] == ckpt.checkpoint_path(out, 4)
    run_in_process(TRAIN_FILES, train_params(example_workspace, out))
    lost = differences(reference, run_outputs(out))
    tally.add("training: SIGKILL during a checkpoint write (+ a truncated newer file)", not lost, len(lost),
              "temp file half written")
    assert not lost, lost
    assert not temp_files(), "the resumed run's next checkpoint save leaves no stale temp file"


# ------------------------------------------------------------------------------- extraction
ROWS = 10  # clips planned by `extraction_inputs`


def rows_done(progress: Path) -> int:
    data = progress.read_bytes()
    return len(data) - data.count(0)


def extraction_phase(store: Path) -> str:
    partial = StorePaths(store).partial
    progress = partial / "progress.rows"
    if store.exists():
        return "finished"
    if progress.is_file():
        return f"{rows_done(progress)}/{ROWS} rows done"
    if (partial / "meta.json").exists():
        return "finalising"
    return "start-up"


@pytest.mark.parametrize("trials", [3, pytest.param(12, marks=pytest.mark.slow)])
def test_extraction_killed_at_random_points_resumes_to_the_same_store(extraction_inputs, tmp_path, tally, trials):
    root, audios, reference, _ = extraction_inputs
    assert tsv_io.read_table(root / "stores" / "clean.failures.tsv")[0]["reason"] == "silent"
    rng, seed = trial_rng()
    failures, attempts = [], Attempts(trials)
    for attempt in attempts:
        store = tmp_path / f"attempt{attempt}" / "store"
        params = extraction_params(root, audios, store)
        progress = StorePaths(store).partial / "progress.rows"
        # A kill point: once `done` rows are written (0: during start-up and planning; all
        # rows: during finalisation), a little later.
        done = rng.randint(0, ROWS)
        run = Forked(functools.partial(run_in_process, EXTRACTION_FILES, params))
        wait_for(lambda: done == 0 or (progress.is_file() and rows_done(progress) >= done) or store.exists(), run)
        time.sleep(rng.uniform(0.0, 0.05))
        if not run.sigkill():
            shutil.rmtree(store.parent)
            continue
        attempts.landed += 1
        phase = extraction_phase(store)
        run_in_process(EXTRACTION_FILES, params)
        lost = store_differences(reference, store)
        left = StorePaths(store).partial.exists()
        tally.add("extraction: SIGKILL at a random point, then resume", not lost and not left, len(lost), phase)
        if lost or left:
            failures.append(f"attempt {attempt} (killed {phase}): {lost}"
                            f"{' and the .partial directory was left' if left else ''}")
    assert attempts.landed == trials, f"seed {seed}: {attempts.landed} of {trials} kills landed before the run ended"
    assert not failures, f"seed {seed}: {failures}"


def test_runs_here_compute_as_the_forked_runs_whatever_this_process_threads(extraction_inputs, tmp_path):
    """Resumed runs here are compared byte for byte with forked one-thread runs. With 3 or more
    threads the tiny CLIP's float32 text features differ in their last bits, so the thread count
    of the test process must not reach `run_in_process` (float32 stores: bf16 hides most of it)."""
    root, audios, _, _ = extraction_inputs
    float32 = ["ExtractAudioFeatures.feature_dtype = 'fp32'"]
    forked, here = tmp_path / "forked" / "store", tmp_path / "here" / "store"
    run_forked(functools.partial(run_in_process, EXTRACTION_FILES, extraction_params(root, audios, forked) + float32))
    with intra_op_threads(16):
        run_in_process(EXTRACTION_FILES, extraction_params(root, audios, here) + float32)
        assert torch.get_num_threads() == 16
    assert store_files(here) == store_files(forked)
