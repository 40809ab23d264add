"""A program that proves the process group works: every rank all-reduces its rank number."""

from __future__ import annotations

import json
from pathlib import Path

import gin
import torch

from mmgin import dist, io
from mmgin.programs.base import Program


@gin.configurable
class CheckDistributed(Program):
    """Sums (rank + 1) over all ranks and checks it against n(n+1)/2.

    Run it first on a new cluster (`torchrun ... launch.py --gin_file=gin/check_distributed.gin`):
    it exercises the rendezvous, the backend and the device mapping in seconds. Rank 0 writes
    `check_distributed.json` with what every rank saw.
    """

    def __init__(self, output_dir: str | Path = gin.REQUIRED):
        super().__init__(output_dir)

    def run(self) -> None:
        info = dist.info()
        value = torch.tensor([float(info.rank + 1)], device=info.device)
        dist.all_reduce_sum(value)
        expected = info.world_size * (info.world_size + 1) / 2
        seen = dist.all_gather_objects(
            {"rank": info.rank, "local_rank": info.local_rank, "device": str(info.device),
             "sum": value.item()}
        )
        if value.item() != expected:
            raise RuntimeError(f"all-reduce gave {value.item()}, expected {expected}")
        if info.is_main:
            report = {"world_size": info.world_size, "expected_sum": expected, "ranks": seen}
            io.write_text(self.output_dir / "check_distributed.json", json.dumps(report, indent=2))
            dist.log_main("all-reduce over %d ranks gave %s as expected", info.world_size, expected)
