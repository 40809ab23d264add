"""The SynthesizeEMA program: network weights for any EMA width from post-hoc EMA snapshots.

    python launch.py --gin_file=gin/synthesize_ema.gin \\
        --gin_param="RUN_DIR = 'output/large_44k'" --gin_param="SynthesizeEMA.sigma_rel = 0.08"
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import gin
from absl import logging

from mmgin import dist, io
from mmgin.model import MMAudio
from mmgin.programs.base import Program
from mmgin.train import ema as ema_lib


@gin.configurable
class SynthesizeEMA(Program):
    """Solves Karras et al.'s Algorithm 3 (float64 least squares) over the snapshots in
    `snapshot_dir` (a Train run's `ema_ckpts`) and writes the EMA of width `sigma_rel` at `step`
    (default: the latest snapshot) into `output_dir` as a released-format state dict. The
    snapshots must be of one run: a folder mixing runs, or holding an unreadable snapshot, is
    an error saying which files to move (a Train run sets aside, at its start, the snapshots of
    other runs in `other_runs/<run>/`, which synthesize there on their own).

    `snapshot_sigma_rels` names the profiles of reference snapshots, which do not record them
    (mmgin's do, in profiles.json). With `network` (a factory, e.g. `@get_network`), the result
    is loaded strictly into it first, so a mismatch stops here rather than at inference, and is
    written in the released file's exact layout (with the tables released files store); without
    it, the file lacks only those tables, which every loader recomputes.
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        sigma_rel: float = 0.05,
        step: int | None = None,
        snapshot_dir: str | Path = gin.REQUIRED,
        snapshot_sigma_rels: Sequence[float] | None = (0.05, 0.1),
        output_name: str | None = None,
        network: Callable[[], MMAudio] | None = None,
    ):
        super().__init__(output_dir)
        self.sigma_rel = float(sigma_rel)
        ema_lib.sigma_rel_to_gamma(self.sigma_rel)  # rejects a bad width before any work
        self.step = step
        self.snapshot_dir = Path(snapshot_dir)
        self.snapshot_sigma_rels = snapshot_sigma_rels
        self.output_name = output_name
        self.network = network

    def run(self) -> None:
        if not dist.is_main():
            return
        snapshots = ema_lib.find_snapshots(self.snapshot_dir, self.snapshot_sigma_rels)
        step = self.step if self.step is not None else max(s.step for s in snapshots)
        weights = ema_lib.synthesize(snapshots, self.sigma_rel, step)
        if self.network is not None:
            network = self.network()
            network.load_weights(weights)
            weights = network.released_state_dict(weights)
        path = self.output_dir / (self.output_name or f"ema_sigma{self.sigma_rel:g}_step{step}.pth")
        io.save_torch(weights, path)
        used = sum(s.step <= step for s in snapshots)
        logging.info("wrote %s: EMA sigma_rel %g at step %d from %d snapshots in %s",
                     path, self.sigma_rel, step, used, self.snapshot_dir)
