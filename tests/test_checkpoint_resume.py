"""Checkpoints: a run killed at a random step resumes bit-identically; a truncated newest
checkpoint falls back to the previous one (and is set aside); an explicit checkpoint resumes
from it. tests/reliability/test_checkpoint_safety.py covers retention, refusals and settings."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmgin import cli, io
from mmgin.testing import example
from mmgin.train import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
STEPS = 6


def train_params(workspace: Path, out: Path, **overrides: object) -> list[str]:
    """A 6-step run with a checkpoint every step, validation every 3, EMA snapshots every 2."""
    return example.train_params(workspace, out, **{
        "Train.batch_size": 2, "Train.num_iterations": STEPS, "CheckpointConfig.every": 1,
        "ValidationConfig.every": 3, "SamplingConfig.every": 1000, "EMAConfig.snapshot_every": 2,
        "StepConfig.deterministic": True, **overrides,
    })


FILES = ["gin/small_16k.gin", "gin/test/tiny_train.gin"]


def run_in_process(params: list[str]) -> None:
    cli.run(FILES, params, [str(REPO)], dry_run=False)


def final_state(out: Path) -> dict:
    newest = ckpt.list_checkpoints(out)[0]
    return io.load_torch(newest)


def assert_identical(a: dict, b: dict, context: str = "") -> None:
    assert a["iteration"] == b["iteration"] == STEPS
    differ = [k for k in a["network"] if not torch.equal(a["network"][k], b["network"][k])]
    assert not differ, f"{context}: network tensors differ: {differ}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for name in sa:
            assert torch.equal(sa[name], sb[name]), name
    for pa, pb in zip(a["ema"]["profiles"], b["ema"]["profiles"]):
        assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert a["ema"]["step"] == b["ema"]["step"] == STEPS
    assert all(torch.equal(x, y) for x, y in zip(a["rng"][0]["generators"], b["rng"][0]["generators"]))
    assert a["loader"] == b["loader"]


@pytest.fixture(scope="module")
def uninterrupted(example_workspace, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_in_process(train_params(example_workspace, out))
    return out


def test_sigkill_at_a_random_step_then_restart_is_bit_identical(example_workspace, uninterrupted, tmp_path):
    out = tmp_path / "run"
    # SystemRandom: an in-process Train seeds the global `random` (as the reference does)
    chance = random.SystemRandom()
    kill_after = int(os.environ.get("MMGIN_TEST_KILL_AFTER", chance.randint(1, STEPS - 2)))
    command = [sys.executable, str(REPO / "launch.py"), *(f"--gin_file={f}" for f in FILES),
               *(f"--gin_param={p}" for p in train_params(example_workspace, out))]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = ckpt.checkpoint_path(out, kill_after)
    deadline = time.monotonic() + 300
    while not target.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(chance.uniform(0.0, 0.3))  # somewhere inside the next step (or its save)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{stderr[-2000:]}"
    saved = [int(p.stem.split("_")[1]) for p in ckpt.list_checkpoints(out)]
    assert saved and max(saved) < STEPS, f"killed after step {kill_after}: {saved}"

    run_in_process(train_params(example_workspace, out))  # same command: resumes automatically
    assert_identical(final_state(uninterrupted), final_state(out), f"killed after step {kill_after}")
    assert len(ckpt.list_checkpoints(out)) == 2  # the last one and the one before


def test_truncated_newest_checkpoint_falls_back_to_the_previous(example_workspace, uninterrupted, tmp_path, caplog):
    out = tmp_path / "run"
    run_in_process(train_params(example_workspace, out, **{"Train.num_iterations": 4, "CheckpointConfig.every": 2}))
    newest = ckpt.checkpoint_path(out, 4)
    truncated = newest.read_bytes()[: newest.stat().st_size // 2]
    newest.write_bytes(truncated)
    with caplog.at_level(logging.WARNING):
        run_in_process(train_params(example_workspace, out))
    assert any("skipped checkpoint" in r.getMessage() and "ckpt_000000004.pth, unreadable" in r.getMessage()
               for r in caplog.records)
    assert_identical(final_state(uninterrupted), final_state(out))
    kept = out / ckpt.CHECKPOINT_DIR / ckpt.UNUSABLE_DIR / newest.name
    assert kept.read_bytes() == truncated  # set aside, never deleted


def test_explicit_checkpoint_resumes_and_corrupt_one_is_an_error(example_workspace, uninterrupted, tmp_path):
    source = ckpt.checkpoint_path(uninterrupted, STEPS - 1)
    out = tmp_path / "run"
    run_in_process(train_params(example_workspace, out, **{"CheckpointConfig.resume_from": str(source)}))
    assert_identical(final_state(uninterrupted), final_state(out))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        run_in_process(train_params(example_workspace, tmp_path / "other", **{"CheckpointConfig.resume_from": str(broken)}))


def test_non_finite_weights_are_never_saved(tmp_path):
    state = {"network": {"w": torch.tensor([1.0, float("nan")])}, "iteration": 3}
    with pytest.raises(ckpt.CheckpointError, match="non-finite values in w"):
        ckpt.save(tmp_path, 3, state)
    assert ckpt.list_checkpoints(tmp_path) == []


def test_resumed_checkpoint_is_mapped_from_its_file_not_copied(tmp_path):
    """Every rank of a resumed run maps the checkpoint (one page-cache copy on the node)
    instead of reading its own multi-GB copy into memory."""
    network = {"w": torch.arange(12, dtype=torch.float32).view(3, 4)}
    path = ckpt.save(tmp_path, 7, {"iteration": 7, "network": network})
    found, state = ckpt.load_latest(tmp_path)
    assert found == path and state["iteration"] == 7
    assert torch.equal(state["network"]["w"], network["w"])
    address = state["network"]["w"].data_ptr()
    mapped = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mapped.append(start <= address < end)
    assert any(mapped), "the checkpoint's tensors do not live in a mapping of its file"
