"""SIGTERM (what SLURM, Kubernetes and torchrun send before SIGKILL) and Ctrl-C.

Training stops at a step boundary with a checkpoint and exit code 0 (alone and under torchrun,
which forwards SIGTERM to its workers' process groups, DataLoader workers included), and the
same command resumes bit-identically; a second SIGTERM or the grace period running out ends it
at once, keeping the checkpoints. Extraction stops between blocks and resumes to the same
store; Evaluate stops between batches keeping its files. Ctrl-C is one line, not a traceback.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from mmgin import io
from mmgin.data.store import StorePaths
from mmgin.train import checkpoint as ckpt

from . import harness
from .test_kills import ROWS, rows_done
from .test_rank_death import resume_under_torchrun, torchrun_command

STOPPED = "stopped by SIGTERM at iteration"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _default_sigint() -> None:
    """Ctrl-C's default action in the child, as at a terminal: a suite started in the background
    by a non-interactive shell ignores SIGINT, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Launched:
    """A launch.py or torchrun subprocess in its own session; its stderr is read as it comes."""

    def __init__(self, command: list[str]):
        self.process = subprocess.Popen(command, cwd=harness.REPO, env=ENV, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        preexec_fn=_default_sigint)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Until a stderr line holds ``text``; returns early if the process ended."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if self.process.poll() is not None:
                return
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.stderr()[-3000:]}"
            time.sleep(0.005)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 300) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(timeout=10)
        return code

    def stderr(self) -> str:
        return "".join(self.lines)


def launch_command(files: list[str], params: list[str]) -> list[str]:
    return [sys.executable, str(harness.REPO / "launch.py"), *(f"--gin_file={f}" for f in files),
            *(f"--gin_param={p}" for p in params)]


def stop_iterations(stderr: str) -> dict[int, int]:
    """rank -> the iteration its 'stopped by SIGTERM' line names."""
    found = {}
    for line in stderr.splitlines():
        if STOPPED in line:
            rank = int(line.split("rank ")[1].split(":")[0])
            found[rank] = int(line.split(STOPPED)[1].split(";")[0])
    return found


def die_writing(path: Path) -> None:
    """A write through io.atomic_path SIGKILLed half-way, as a snapshot write hit by a kill."""
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(b"half a snapshot")
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------- training
def test_sigterm_stops_training_with_a_checkpoint_and_the_same_command_resumes_bit_identically(
        example_workspace, uninterrupted, tmp_path, tally):
    reference, _ = uninterrupted
    out = tmp_path / "run"
    # No periodic checkpoint before the last step: the one at the stop (from step 2 on, as the
    # ranks' vote is read a step later) can only come from the stop.
    params = harness.train_params(example_workspace, out,
                                  **{"CheckpointConfig.every": harness.STEPS, "LogConfig.every": 1})
    run = Launched(launch_command(harness.TRAIN_FILES, params))
    run.wait_for(f"it 1/{harness.STEPS}")
    run.signal(signal.SIGTERM)
    code = run.finish()
    stderr = run.stderr()
    assert code == 0, stderr[-3000:]
    stopped_at = stop_iterations(stderr)[0]
    assert f"{STOPPED} {stopped_at}; run the same command to resume" in stderr
    assert 1 < stopped_at < harness.STEPS, stopped_at
    assert ckpt.list_checkpoints(out) == [ckpt.checkpoint_path(out, stopped_at)]
    assert io.load_torch(ckpt.checkpoint_path(out, stopped_at))["ema"]["step"] == stopped_at
    assert not (out / "ema_final.pth").exists() and "Traceback" not in stderr

    # A snapshot write killed half-way leaves its temp file: the next run removes it.
    writer = harness.Forked(functools.partial(die_writing, out / "ema_ckpts" / f"0.{harness.STEPS}.pt"))
    assert writer.join() == -signal.SIGKILL
    temps = lambda: list((out / "ema_ckpts").glob(".*.tmp"))  # noqa: E731
    assert temps()
    harness.run_in_process(harness.TRAIN_FILES, params)  # the same command: it resumes from the stop's checkpoint
    assert not temps()
    got = harness.run_outputs(out)
    # The stop's checkpoint is an extra one that retention may keep: compare everything else.
    lost = harness.differences({k: v for k, v in reference.items() if k != "checkpoints"},
                       {k: v for k, v in got.items() if k != "checkpoints"})
    tally.add("training: SIGTERM mid-run → checkpoint at the stop, exit 0; the same command resumes",
              not lost, len(lost), f"stopped at iteration {stopped_at}")
    assert not lost, lost


def sigterm_at_checkpoint_2(command: list[str], out: Path, twice: bool) -> tuple[int, str]:
    """Runs ``command``, SIGTERMs it once checkpoint 2 is saved (``twice``: again once the first
    was handled); its exit status and stderr."""
    run = Launched(command)
    run.wait_for(f"saved {ckpt.checkpoint_path(out, 2)}")
    run.signal(signal.SIGTERM)
    if twice:
        run.wait_for("SIGTERM: stopping at the next safe point")
        run.signal(signal.SIGTERM)
    return run.finish(), run.stderr()


def test_a_second_sigterm_or_the_grace_period_ends_training_at_once(example_workspace, tmp_path, tally):
    """Both fall back to SIGTERM's default action (exit status -15); the checkpoints written
    so far stay readable and the run is resumable."""
    for case, extra in (("second SIGTERM", {}), ("grace period exceeded", {"Train.sigterm_grace_seconds": 0.001})):
        for attempt in range(3):  # a second signal that comes after the graceful stop ended is retried
            out = tmp_path / f"{case.replace(' ', '_')}{attempt}"
            command = launch_command(harness.TRAIN_FILES, harness.train_params(example_workspace, out, **extra))
            code, stderr = sigterm_at_checkpoint_2(command, out, twice=case == "second SIGTERM")
            if not (code == 0 and STOPPED in stderr):
                break
        found = ckpt.load_latest(out)
        survived = (code == -signal.SIGTERM and STOPPED not in stderr and found is not None
                    and found[1]["iteration"] >= 2)
        landed = f"after checkpoint {found[1]['iteration'] if found else None}"
        tally.add(f"training: SIGTERM, then {case} → ended at once, checkpoints intact", survived, 0, landed)
        assert survived, (case, code, stderr[-3000:])
        if case == "grace period exceeded":
            assert "did not stop within 0 s of SIGTERM; stopping at once" in stderr, stderr[-3000:]


def test_sigterm_to_torchrun_stops_both_ranks_with_one_checkpoint_and_the_run_resumes(
        example_workspace, tmp_path, tally):
    """torchrun sends SIGTERM to each worker's process group: DataLoader workers (one per rank
    here) get it too and must leave the stop to their rank."""
    out = tmp_path / "run"
    params = harness.train_params(example_workspace, out, **{
        "Train.batch_size": 2, "CheckpointConfig.every": harness.STEPS, "LogConfig.every": 1, "Train.num_workers": 1})
    run = Launched(torchrun_command(params))
    run.wait_for(f"it 1/{harness.STEPS}")
    run.signal(signal.SIGTERM)
    run.finish()
    stderr = run.stderr()
    stopped = stop_iterations(stderr)
    assert set(stopped) == {0, 1} and len(set(stopped.values())) == 1, stderr[-3000:]
    stopped_at = stopped[0]
    assert "SIGKILL" not in stderr and "exited unexpectedly" not in stderr, stderr[-3000:]
    assert 1 < stopped_at < harness.STEPS and ckpt.list_checkpoints(out) == [ckpt.checkpoint_path(out, stopped_at)]

    resume_under_torchrun(params, out, ckpt.checkpoint_path(out, stopped_at), ENV)
    tally.add("torchrun: SIGTERM to torchrun (2 ranks, DataLoader workers) → both ranks stop at one "
              "iteration with one checkpoint; the same command resumes", True, 0,
              f"stopped at iteration {stopped_at}")


def test_ctrl_c_prints_one_line_instead_of_a_traceback(example_workspace, tmp_path, scenario):
    out = tmp_path / "run"
    # A run far longer than the test waits: the interrupt always lands mid-run, however slowly
    # this process reads the run's log on a loaded machine.
    params = harness.train_params(example_workspace, out, **{"Train.num_iterations": 10_000})
    run = Launched(launch_command(harness.TRAIN_FILES, params))
    run.wait_for(f"saved {ckpt.checkpoint_path(out, 1)}")
    run.signal(signal.SIGINT)
    assert run.finish() == 130
    stderr = run.stderr()
    assert stderr.splitlines()[-1] == "mmgin: interrupted; run the same command to resume", stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert ckpt.load_latest(out) is not None


# ------------------------------------------------------------------------------- extraction
def test_sigterm_stops_extraction_between_blocks_and_it_resumes_to_the_same_store(
        extraction_inputs, tmp_path, tally):
    store = tmp_path / "store"
    progress = StorePaths(store).partial / "progress.rows"
    params, run = harness.fork_extraction(extraction_inputs, store)
    harness.wait_for(lambda: progress.is_file() and rows_done(progress) >= 2, run)
    os.kill(run.process.pid, signal.SIGTERM)
    assert run.join() == 0, run.error
    done = rows_done(progress)
    assert not store.exists() and 2 <= done < ROWS, done  # stopped between blocks, rows kept
    harness.run_in_process(harness.EXTRACTION_FILES, params)
    lost = harness.store_differences(extraction_inputs.reference, store)
    tally.add("extraction: SIGTERM mid-run → exit 0 with the rows done kept; the same command resumes",
              not lost, len(lost), f"{done}/{ROWS} rows done")
    assert not lost and not StorePaths(store).partial.exists(), lost


def test_a_pipeline_stops_after_the_stage_sigterm_stopped(extraction_inputs, tmp_path, scenario):
    """Two extraction stages: SIGTERM during the first stops it, and the second never starts
    (it would read unfinished outputs); the same command finishes both."""
    root, audios, reference, _ = extraction_inputs
    first, second = tmp_path / "first", tmp_path / "second"
    params = harness.extraction_params(root, audios, first) + [
        "launch.program = @Pipeline()", f"Pipeline.output_dir = '{tmp_path / 'pipeline'}'",
        "Pipeline.stages = [@first/ExtractAudioFeatures, @second/ExtractAudioFeatures]",
        f"second/ExtractAudioFeatures.output_dir = '{second}'"]
    progress = StorePaths(first).partial / "progress.rows"
    run = harness.Forked(functools.partial(harness.run_in_process, harness.EXTRACTION_FILES, params))
    harness.wait_for(lambda: progress.is_file() and rows_done(progress) >= 2, run)
    os.kill(run.process.pid, signal.SIGTERM)
    assert run.join() == 0, run.error
    assert not first.exists() and not second.exists() and not StorePaths(second).partial.exists()
    harness.run_in_process(harness.EXTRACTION_FILES, params)
    assert harness.store_files(first) == reference and harness.store_files(second) == reference


# --------------------------------------------------------------------------------- evaluate
def test_sigterm_stops_evaluate_between_batches_keeping_its_files(example_workspace, tmp_path, tally):
    from mmgin.model import get_network

    from .test_security import write_store_with_ids

    ids = [f"item_{k:02d}" for k in range(12)]
    store = write_store_with_ids(tmp_path / "stores" / "eval", ids, duration=2.0)
    network = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.full((20,), 0.5),
                          empty_string_feat=torch.zeros(77, 1024))
    weights = tmp_path / "mmaudio_tiny_16k.pth"
    io.save_torch(network.state_dict(), weights)
    out = tmp_path / "eval"
    params = ["NETWORK = 'tiny_16k'", "FlowMatching.num_steps = 1", "Evaluate.batch_size = 1",
              "Evaluate.duration = 2.0", f"WEIGHTS = '{weights}'", f"OUTPUT_DIR = '{out}'", f"STORE = '{store}'"]
    flacs = lambda: sorted((out / "test-sampled").glob("*.flac"))  # noqa: E731
    run = harness.Forked(functools.partial(harness.run_in_process, ["gin/evaluate_16k.gin", "gin/audio/tiny.gin",
                                                    "gin/test/tiny_encoders.gin"], params))
    harness.wait_for(lambda: len(flacs()) >= 1, run)
    os.kill(run.process.pid, signal.SIGTERM)
    assert run.join() == 0, run.error
    written = flacs()
    survived = 1 <= len(written) < len(ids) and not (out / "metrics.json").exists()
    tally.add("Evaluate: SIGTERM mid-run → exit 0, the flac files written are kept (no metrics)",
              survived, 0, f"{len(written)}/{len(ids)} files written")
    assert survived, [p.name for p in written]
