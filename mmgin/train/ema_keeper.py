"""Train's EMA: the post-hoc EMA profiles of the run, their snapshots between steps, and the
final EMA (`ema_final.pth`, the released layout) synthesized when the run ends.

The algorithm is mmgin.train.ema's; this component applies it to one run on rank 0.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import gin
from absl import logging

from mmgin import dist, io
from mmgin.model import MMAudio
from mmgin.train import ema as ema_lib
from mmgin.train.checkpointing import FINAL_EMA
from mmgin.train.metrics import Writer
from mmgin.train.trainer import Trainer, require_positive

EMA_DIR = "ema_ckpts"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EMAConfig:
    """`Train.ema = @EMAConfig()` (`Train.ema = None`: no EMA): one power EMA per `sigma_rels`,
    updated every `update_every` steps, snapshots every `snapshot_every`; the run ends with the
    EMA at `final_sigma_rel` in ema_final.pth (None: only the snapshots)."""

    sigma_rels: Sequence[float] = (0.05, 0.1)
    snapshot_every: int = 5000
    update_every: int = 1
    final_sigma_rel: float | None = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma_rels", tuple(float(s) for s in self.sigma_rels))
        if len(self.sigma_rels) < 2 or len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"EMAConfig.sigma_rels={self.sigma_rels}: synthesis needs at least two "
                             "distinct values")
        require_positive(self, "snapshot_every", "update_every")
        for sigma_rel in self.sigma_rels + ((self.final_sigma_rel,) if self.final_sigma_rel is not None else ()):
            try:
                ema_lib.sigma_rel_to_gamma(sigma_rel)
            except ValueError as e:
                raise ValueError(f"EMAConfig: {e}") from None


class EMAKeeper:
    """Makes the run's PostHocEMA (`start`), writes its snapshots (`due`, `run`) and the final EMA."""

    def __init__(self, config: EMAConfig, output_dir: Path):
        self.config = config
        self.folder = output_dir / EMA_DIR
        self.final = output_dir / FINAL_EMA
        self.ema: ema_lib.PostHocEMA | None = None

    def start(self, network: MMAudio, run_id: str | None) -> ema_lib.PostHocEMA | None:
        """The EMA of rank 0, its profiles copies of the network's starting weights; the
        snapshots this run cannot use are moved aside first. Other ranks keep none."""
        if dist.is_main():
            ema_lib.set_aside(self.folder, run_id)
            self.ema = ema_lib.PostHocEMA(network, self.folder, self.config.sigma_rels,
                                          self.config.snapshot_every, self.config.update_every, run_id=run_id)
        return self.ema

    def due(self, iteration: int) -> bool:
        """A snapshot is due by the EMA's own step count (rank 0 keeps the EMA)."""
        return self.ema is not None and self.ema.snapshot_due()

    def run(self, trainer: Trainer, writer: Writer) -> None:
        self.ema.write_snapshots()

    def finish(self, network: MMAudio) -> None:
        """The last snapshot (unless just written) and ema_final.pth at `final_sigma_rel` (rank 0)."""
        ema = self.ema
        if ema is None:
            return
        if ema.step % ema.snapshot_every:
            ema.write_snapshots()
        if self.config.final_sigma_rel is not None:
            weights = ema_lib.synthesize(ema_lib.find_snapshots(self.folder), self.config.final_sigma_rel, ema.step)
            io.save_torch(network.released_state_dict(weights), self.final)
            logging.info("wrote %s (EMA sigma_rel %s at step %d)", self.final, self.config.final_sigma_rel, ema.step)
