"""Process groups for real: torchrun with gloo, single node and two nodes over c10d."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmgin import dist

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_args(out: Path) -> list[str]:
    return [str(REPO / "launch.py"), "--gin_file=gin/test/check_distributed.gin",
            f"--gin_param=OUTPUT_DIR='{out}'"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_single_process_fallback():
    dist.shutdown()
    info = dist.init("cpu")
    try:
        assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
        assert dist.all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0]
        assert dist.all_gather_objects("x") == ["x"]
    finally:
        dist.shutdown()


def test_torchrun_standalone_two_ranks_all_reduce(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", *check_args(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180, env=env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "check_distributed.json").read_text())
    assert report["world_size"] == 2
    assert [r["sum"] for r in report["ranks"]] == [3.0, 3.0]
    assert [r["rank"] for r in report["ranks"]] == [0, 1]


def test_two_nodes_c10d_rendezvous(tmp_path):
    out = tmp_path / "out"
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
              f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=mmgin-test", "--max_restarts=0"]
    nodes = [
        subprocess.Popen([*TORCHRUN, *common, *check_args(out)], cwd=REPO, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    report = json.loads((out / "check_distributed.json").read_text())
    assert report["world_size"] == 2 and report["expected_sum"] == 3.0
    assert sorted(r["local_rank"] for r in report["ranks"]) == [0, 0]


def test_bad_rank_environment_is_a_clear_error(monkeypatch):
    dist.shutdown()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        dist.init("cpu")
    dist.shutdown()
