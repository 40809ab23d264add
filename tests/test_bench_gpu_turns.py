"""bench/train_step.py --gpu_lock: processes sharing a GPU time their steps one at a time, and no
process times while another still builds, compiles or warms up (real processes, a real flock)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A process: hold the shared turn for `setup` seconds (building, compiling), then take `turns`
# exclusive turns of 0.2 s each, printing when each began and ended.
WORKER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("bench_train_step", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
from pathlib import Path
turns = bench.GpuTurns(Path(sys.argv[2]))
print("setup", time.time(), flush=True)
time.sleep(float(sys.argv[3]))
print("setup_done", time.time(), flush=True)
for _ in range(int(sys.argv[4])):
    with turns.alone():
        began = time.time()
        time.sleep(0.2)
        print("turn", began, time.time(), flush=True)
"""


def _start(lock: Path, setup: float, turns: int) -> subprocess.Popen:
    command = [sys.executable, "-c", WORKER, str(REPO / "bench" / "train_step.py"), str(lock), str(setup), str(turns)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_timed_turns_never_overlap_and_wait_for_every_setup(tmp_path: Path) -> None:
    lock = tmp_path / "gpu.lock"
    slow = _start(lock, 3.0, 3)
    first_line = slow.stdout.readline()  # it holds the shared turn from here on
    assert first_line.startswith("setup"), first_line
    workers = [slow, _start(lock, 0.1, 3), _start(lock, 0.5, 3)]
    outputs = []
    for worker in workers:
        stdout, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        outputs.append([line.split() for line in (first_line + stdout if worker is slow else stdout).splitlines()])
    turns = sorted((float(a), float(b)) for out in outputs for kind, a, *b in out if kind == "turn" for b in b)
    assert len(turns) == 9
    for (_, end), (start, _) in zip(turns, turns[1:]):
        assert start >= end, f"two timed turns overlapped: {turns}"
    # The slow process set up for 3 s under the shared turn: nobody timed before it was done.
    slow_setup_done = float(next(a for kind, a, *_ in outputs[0] if kind == "setup_done"))
    assert turns[0][0] >= slow_setup_done - 0.05, (turns[0], slow_setup_done)
