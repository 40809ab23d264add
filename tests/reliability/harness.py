"""Helpers the reliability scenarios share: tiny runs, killing a forked run, comparing outputs.

Runs to be killed are forked from the test process (a real process, killed with a real
SIGKILL) instead of started with `python launch.py`: a fork needs no interpreter start and no
imports, which would cost seconds per trial. Resumes run in the test process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import multiprocessing
import os
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from mmgin import cli, io
from mmgin.data.store import StorePaths
from mmgin.testing import example
from mmgin.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]
TRAIN_FILES = ["gin/small_16k.gin", "gin/test/tiny_train.gin"]
TINY_ENCODERS = "gin/test/tiny_encoders.gin"
EXTRACTION_FILES = ["gin/extract_audio_16k.gin", TINY_ENCODERS]
STEPS = 6


def train_params(workspace: Path, out: Path, **overrides: object) -> list[str]:
    """A 6-step tiny training run on the example stores: a checkpoint every step, validation
    every 3, EMA snapshots every 2, deterministic on one thread (so runs compare bit for bit)."""
    return example.train_params(workspace, out, **{
        "Train.codec": None,  # no generated samples: they cost seconds and are covered elsewhere
        "Train.num_iterations": STEPS, "CheckpointConfig.every": 1, "LogConfig.every": 2,
        "ValidationConfig.every": 3, "EMAConfig.snapshot_every": 2, "StepConfig.deterministic": True, **overrides,
    })


def extraction_params(inputs: Path, audios: Path, store: Path) -> list[str]:
    """The audio extraction of `extraction_inputs`: blocks of 2 clips, captions one by one."""
    return [f"AUDIO_DIR = '{audios}'", f"CAPTIONS_TSV = '{inputs / 'captions.tsv'}'",
            f"CLIPS_TSV = '{inputs / 'clips.tsv'}'", f"OUTPUT_DIR = '{store}'",
            "ExtractAudioFeatures.batch_size = 2", "ExtractAudioFeatures.text_batch_size = 1",
            "ExtractAudioFeatures.num_workers = 0", "launch.device = 'cpu'"]


class ExtractionInputs(NamedTuple):
    """The inputs of the reliability extractions (fixture `extraction_inputs`): the folder with
    the tables, the audio folder, the files of the store an uninterrupted run writes, its wall time."""

    root: Path
    audios: Path
    reference: dict[str, bytes]
    seconds: float


def run_in_process(files: list[str], params: list[str]) -> None:
    """Runs a program here with one intra-op thread, as the forked runs do (`_child`).

    Resumed runs are compared byte for byte with uninterrupted forked ones, so both must do the
    same arithmetic: with another thread count a CPU kernel may sum in another order (a fresh
    clone on another machine saw the text features of resumed extractions differ).
    """
    with intra_op_threads(1):
        assert cli.run(files, params, [str(REPO)], dry_run=False) == 0


@contextlib.contextmanager
def intra_op_threads(count: int):
    """torch's intra-op thread count set to ``count`` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _child(target: Callable[[], None], errors, stacks: str) -> None:
    # Objects inherited from the parent are never collected here: their finalizers (a closed
    # TensorBoard writer joining its thread, which does not exist in the fork) would hang.
    gc.freeze()
    torch.set_num_threads(1)  # no OpenMP pool inherited half-made from the parent
    faulthandler.register(signal.SIGUSR1, file=open(stacks, "w"), all_threads=True)
    try:
        target()
    except BaseException as error:
        errors.send(f"{type(error).__name__}: {error}")
        raise


class Forked:
    """A function running in a forked process; `error` is what it raised, if it did."""

    def __init__(self, target: Callable[[], None]):
        context = multiprocessing.get_context("fork")
        self._errors, child_end = context.Pipe(duplex=False)
        self._stacks = tempfile.NamedTemporaryFile(prefix="mmgin-forked-", suffix=".txt")
        gc.collect()  # leave the child as little garbage with finalizers as possible
        self.process = context.Process(target=_child, args=(target, child_end, self._stacks.name), daemon=True)
        self.process.start()
        child_end.close()

    def stacks(self) -> str:
        """The Python stacks of every thread of the (running) process, for a hang report."""
        os.kill(self.process.pid, signal.SIGUSR1)
        time.sleep(0.5)
        return Path(self._stacks.name).read_text()

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float = 600) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def sigkill(self) -> bool:
        """SIGKILLs the process; True if it was still running (the kill landed)."""
        alive = self.process.is_alive()
        if alive:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=60)
        return alive and self.process.exitcode == -signal.SIGKILL

    @property
    def error(self) -> str | None:
        """What the function raised; None if it raised nothing or the process was killed."""
        try:
            return self._errors.recv() if self._errors.poll() else None
        except EOFError:
            return None


def run_forked(target: Callable[[], None]) -> float:
    """Runs ``target`` to the end in a forked process, as the killed runs do; returns its wall
    time (the span kill points are drawn from)."""
    start = time.perf_counter()
    forked = Forked(target)
    assert forked.join() == 0, f"the uninterrupted run failed: {forked.error}"
    return time.perf_counter() - start


def fork_extraction(inputs: ExtractionInputs, store: Path) -> tuple[list[str], Forked]:
    """The extraction of ``inputs`` into ``store`` started in a forked process (to be stopped or
    killed), and its parameters, which run it again here."""
    params = extraction_params(inputs.root, inputs.audios, store)
    return params, Forked(functools.partial(run_in_process, EXTRACTION_FILES, params))


def wait_for(condition: Callable[[], bool], forked: Forked, timeout: float = 60.0) -> bool:
    """Polls until ``condition`` holds (True) or the process ends (False); a process still
    running after ``timeout`` s without getting there has hung: AssertionError with its stacks."""
    def holds() -> bool:
        try:
            return condition()
        except FileNotFoundError:  # the live process renamed a file between two looks
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holds():
            return True
        if not forked.is_alive():
            return holds()
        time.sleep(0.002)
    raise AssertionError(f"no progress in {timeout} s; the process hangs in:\n{forked.stacks()}")


def run_outputs(out: Path) -> dict[str, object]:
    """What a finished training run leaves that must not depend on interruptions: the newest
    checkpoint (without its config text, which names the run's own directory, and its run id,
    which names the run), the checkpoint names kept, the EMA snapshots (without the run id) and
    the synthesized EMA weights."""
    names = ckpt.list_checkpoints(out)
    newest = {k: v for k, v in io.load_torch(names[0]).items() if k not in ("config", "run_id")}
    snapshots = {p.name: io.load_torch(p) for p in sorted((out / "ema_ckpts").glob("*.pt"))}
    for snapshot in snapshots.values():
        snapshot["_extra_state"].pop("run_id")
    return {"checkpoint": newest, "ema_final": io.load_torch(out / "ema_final.pth"),
            "snapshots": snapshots, "checkpoints": [p.name for p in names]}


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a finished store and its tables (config records name the run's paths)."""
    files = {p.name: p.read_bytes() for p in store.iterdir() if not p.name.endswith(".gin")}
    for path in (StorePaths(store).tsv, StorePaths(store).failures):
        files[path.name.replace(store.name, "<store>")] = path.read_bytes()
    return files


def store_differences(reference: dict[str, bytes], store: Path) -> list[str]:
    """The files of `store_files` that ``store`` lacks, has in excess or holds otherwise than
    ``reference``: the data an interruption lost."""
    got = store_files(store)
    return sorted(k for k in reference.keys() | got.keys() if reference.get(k) != got.get(k))


def differences(a: object, b: object, where: str = "") -> list[str]:
    """Paths at which two nested structures of tensors and plain values differ (bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def trial_rng() -> tuple[random.Random, int]:
    """A seeded generator for kill points; MMGIN_RELIABILITY_SEED=<seed> replays a failed run."""
    seed = int(os.environ.get("MMGIN_RELIABILITY_SEED", str(time.time_ns() % 2**31)))
    return random.Random(seed), seed
