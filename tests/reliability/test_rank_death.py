"""One rank of a 2-process torchrun training run is SIGKILLed: the other stops within a timeout,
torchrun's report names the dead rank, and the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmgin import io
from mmgin.train import checkpoint as ckpt

from .harness import REPO, STEPS, TRAIN_FILES, differences, run_outputs, train_params

STOP_TIMEOUT = 60.0


def torchrun_command(params: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "--monitor-interval=0.2", str(REPO / "launch.py"),
            *(f"--gin_file={f}" for f in TRAIN_FILES), *(f"--gin_param={p}" for p in params)]


def resume_under_torchrun(params: list[str], out: Path, checkpoint: Path, env: dict[str, str]) -> None:
    """Runs the stopped 2-rank run's command again: it must resume from ``checkpoint`` and end
    at the last iteration on both ranks."""
    resumed = subprocess.run(torchrun_command(params), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint}" in resumed.stderr, resumed.stderr[-3000:]
    final = io.load_torch(ckpt.list_checkpoints(out)[0])
    assert final["iteration"] == STEPS and final["world_size"] == 2


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        for task in Path(f"/proc/{queue.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def worker_pid(torchrun_pid: int, local_rank: int) -> int | None:
    for pid in descendants(torchrun_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return pid
    return None


def test_a_killed_rank_stops_the_run_with_its_name_and_the_run_resumes(example_workspace, tmp_path, tally):
    out = tmp_path / "run"
    params = train_params(example_workspace, out, **{"Train.batch_size": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(torchrun_command(params), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ckpt.checkpoint_path(out, 2).exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = worker_pid(run.pid, local_rank=1)
        assert run.poll() is None and victim is not None, "the run ended before a rank could be killed"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = run.communicate(timeout=STOP_TIMEOUT)
        stopped_after = time.monotonic() - killed_at
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode != 0 and stopped_after < STOP_TIMEOUT
    assert "ChildFailedError" in stderr, stderr[-3000:]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", stderr), stderr[-3000:]
    assert re.search(rf"Signal 9 \(SIGKILL\) received by PID {victim}", stderr), stderr[-3000:]
    assert not any(p.exists() for p in map(Path, (f"/proc/{pid}" for pid in descendants(run.pid))))

    last = ckpt.list_checkpoints(out)[0]
    resume_under_torchrun(params, out, last, env)
    tally.add("torchrun: SIGKILL of rank 1 of 2, then resume", True, 0,
              f"after checkpoint {last.stem.split('_')[1].lstrip('0')}; rank 0 stopped {stopped_after:.1f} s later")


@pytest.mark.slow
def test_a_resumed_two_rank_run_equals_an_uninterrupted_one(example_workspace, tmp_path, tally):
    """The exactness of the resume above, against a 2-rank run that was never interrupted."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, kill_after in (("uninterrupted", None), ("killed", 3)):
        out = tmp_path / name
        params = train_params(example_workspace, out, **{"Train.batch_size": 2})
        run = subprocess.Popen(torchrun_command(params), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        if kill_after is not None:
            while not ckpt.checkpoint_path(out, kill_after).exists() and run.poll() is None:
                time.sleep(0.02)
            os.kill(worker_pid(run.pid, local_rank=0), signal.SIGKILL)
        run.wait(timeout=300)
        if kill_after is not None:
            assert run.returncode != 0
            subprocess.run(torchrun_command(params), cwd=REPO, env=env, check=True, capture_output=True,
                           timeout=300)
        runs[name] = run_outputs(out)
    lost = differences(runs["uninterrupted"], runs["killed"])
    tally.add("torchrun: SIGKILL of rank 0 of 2, resume equals an uninterrupted 2-rank run", not lost, len(lost),
              "after checkpoint 3")
    assert lost == []
