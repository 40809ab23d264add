"""Every GPU benchmark script runs its CPU check (`--smoke`) and prints its JSON record, so a
change to the programs they drive cannot leave them broken until the next GPU session.
(bench/train_step.py has its own CPU test in tests/test_model_compile.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPTS = {
    "train_launch.py": ("--workdir", "{tmp}"),
    "clip_variants.py": (),
    "extract.py": ("--root", "{tmp}", "--profile", "{tmp}/profile"),
    "extract_launch.py": ("--root", "{tmp}"),
    "loader.py": ("--root", "{tmp}"),
    "evaluate.py": (),
    "evaluate_launch.py": ("--workdir", "{tmp}"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs_its_cpu_check(script: str, tmp_path: Path) -> None:
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in SCRIPTS[script]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), "--smoke", *arguments], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout[done.stdout.rindex("\n{"):] if "\n{" in done.stdout else done.stdout
    assert isinstance(json.loads(printed), dict), done.stdout[-2000:]


def test_every_benchmark_script_has_a_cpu_check() -> None:
    """A new bench script gets an entry above (or its own test, as train_step.py has)."""
    scripts = {p.name for p in (REPO / "bench").glob("*.py")}
    own_tests = {"train_step.py"}
    gpu_only = {"audio_codec.py", "encoder_precision.py", "multi_gpu.py"}
    assert scripts - own_tests - gpu_only == set(SCRIPTS)
