"""Train's checkpointing: where a run starts (its own checkpoint, a named one, weights, a
reference run) and the checkpoints it writes (cadence, retention, per-rank state).

The file format and the rules for usable checkpoints are mmgin.train.checkpoint's; this
component applies them to one run.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import gin
from absl import logging

from mmgin import dist
from mmgin.model import MMAudio
from mmgin.model.loading import find_network_file, load_weights_into
from mmgin.train import checkpoint as ckpt
from mmgin.train import reference_run, rng
from mmgin.train.batches import MicroBatchSource
from mmgin.train.metrics import Writer
from mmgin.train.trainer import Trainer, cadence, require_positive

FINAL_EMA = "ema_final.pth"
_STARTS = ("resume_from", "weights", "continue_reference_run")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """`Train.checkpointing = @CheckpointConfig()`: a checkpoint `every` iterations (and at the
    last), the newest `keep` kept. At most one of `resume_from` (a checkpoint to resume, unless
    the output directory's run is past it), `weights` (the network of any weights file or
    checkpoint, for fine-tuning) and `continue_reference_run` (a reference <exp>_ckpt_last.pth)."""

    every: int = 10_000
    keep: int = 2
    resume_from: str | Path | None = None
    weights: str | Path | None = None
    continue_reference_run: str | Path | None = None

    def __post_init__(self) -> None:
        require_positive(self, "every", "keep")
        chosen = [n for n in _STARTS if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set one of CheckpointConfig.{', CheckpointConfig.'.join(chosen)}: "
                             "each says where the run starts")


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """What an exact resume must find unchanged in a checkpoint, besides the network."""

    accumulation: int
    seed: int
    ema_sigma_rels: tuple[float, ...] | None  # None: the run keeps no EMA


class Checkpointing:
    """Decides where the run starts (`start`) and writes its checkpoints (`save`)."""

    def __init__(self, config: CheckpointConfig, output_dir: Path, network: MMAudio, identity: RunIdentity,
                 source: MicroBatchSource, num_iterations: int):
        self.config = config
        self.due = cadence(config.every, num_iterations)
        self.source = source
        self._check_start_files()
        self.output_dir = output_dir
        self.network = network
        self.identity = identity
        self.run_id: str | None = None

    def _check_start_files(self) -> None:
        """The files the run may start from exist, so a dry run stops on a misspelt path; they
        are read by `start`, once the output directory says whether the run resumes instead."""
        config = self.config
        if config.weights is not None:
            find_network_file(config.weights, "CheckpointConfig.weights")
        for name in ("resume_from", "continue_reference_run"):
            if getattr(config, name) is not None:
                ckpt.existing_file(getattr(config, name), f"CheckpointConfig.{name}")

    def unusable(self, state: dict[str, Any]) -> str | None:
        """Why a checkpoint cannot continue this run exactly (None: it can). Settings it holds
        that a resume applies (learning rate, schedule, betas, eps, weight decay) are no reason."""
        mismatch = self.network.weights_mismatch(state["network"])
        if mismatch is not None:
            return mismatch
        ours = self.identity
        for setting, theirs, mine in (
                ("the number of ranks", state.get("world_size"), dist.world_size()),
                ("gradient accumulation steps", state.get("accumulation", ours.accumulation), ours.accumulation),
                ("Train.seed", state.get("seed", ours.seed), ours.seed)):
            if theirs != mine:
                return (f"{setting} is {theirs} in the checkpoint, {mine} in this run: an exact resume needs "
                        "the same (to change it, start a new run with CheckpointConfig.weights=<checkpoint>)")
        ema = state.get("ema")
        if ours.ema_sigma_rels is not None and ema is None:
            return "it holds no EMA, and this run keeps one (Train.ema = @EMAConfig())"
        if ours.ema_sigma_rels is not None and [float(x) for x in ema["sigma_rels"]] != list(ours.ema_sigma_rels):
            return (f"EMAConfig.sigma_rels is {tuple(ema['sigma_rels'])} in the checkpoint, "
                    f"{ours.ema_sigma_rels} in this run: a run's EMA profiles are fixed")
        return None

    def start(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(checkpoint to resume, reference checkpoint to continue): reads the output directory,
        moves unusable checkpoints aside, puts the starting weights into the network and names
        the run (a resume keeps its id; a run continuing a reference run is unnamed, as the
        reference's snapshots are)."""
        resume, reference = self._resume_state(), None
        config = self.config
        if resume is not None:
            self.network.load_weights(resume["network"])
            self.run_id = resume.get("run_id")
            return resume, None
        if config.weights is not None:
            dist.log_main("initialising the network from CheckpointConfig.weights=%s", config.weights)
            load_weights_into(self.network, config.weights, "CheckpointConfig.weights")
        elif config.continue_reference_run is not None:
            reference = reference_run.load(config.continue_reference_run)
            reference_run.load_weights(self.network, reference, Path(config.continue_reference_run))
        self.run_id = None if reference is not None else dist.broadcast_object(uuid.uuid4().hex[:12])
        return None, reference

    def restore(self, trainer: Trainer, resume: dict[str, Any] | None,
                reference: dict[str, Any] | None) -> None:
        """A checkpoint that `unusable` accepted into the trainer, loader and generators, or the
        reference run's optimizer, schedule and EMA into the trainer."""
        rank = dist.rank()
        if resume is not None:
            trainer.load_state_dict(resume)
            self.source.load_state_dict(resume["loader"][rank])
            rng.restore(resume["rng"][rank], trainer.generators)
        elif reference is not None:
            reference_run.continue_from(trainer, reference, Path(self.config.continue_reference_run))

    def _resume_state(self) -> dict[str, Any] | None:
        """The checkpoint this run continues: the newest usable one of its output directory, or
        CheckpointConfig.resume_from when that is newer (a re-run command never rewinds the run)."""
        named_path = self.config.resume_from
        named = ckpt.load_file(named_path, self.unusable) if named_path is not None else None
        found = ckpt.load_latest(self.output_dir, self.unusable)
        if found is None or (named is not None and named["iteration"] > found[1]["iteration"]):
            self._refuse_over_a_finished_run()
            if named is not None:
                dist.log_main("resuming from CheckpointConfig.resume_from=%s", named_path)
            return named
        if named is not None:
            dist.log_main("resuming from %s: CheckpointConfig.resume_from=%s (iteration %d) is not used, the "
                          "run in %s is at or past it", found[0], named_path, named["iteration"], self.output_dir)
            return found[1]
        dist.log_main("resuming from %s", found[0])
        for name in ("weights", "continue_reference_run"):
            if getattr(self.config, name) is not None:
                dist.log_main("CheckpointConfig.%s=%s is not used: the run continues from its checkpoint",
                              name, getattr(self.config, name))
        return found[1]

    def _refuse_over_a_finished_run(self) -> None:
        """A run that does not continue the output directory's own never replaces its ema_final.pth."""
        final = self.output_dir / FINAL_EMA
        if final.exists():
            raise ckpt.CheckpointError(
                f"{final} is the result of a finished run, and {self.output_dir} has no checkpoint this run "
                "continues; to start a new run, set OUTPUT_DIR to a new folder (or move that one away)"
            )

    def run(self, trainer: Trainer, writer: Writer | None = None) -> None:
        """Gathers every rank's RNG and loader state; rank 0 writes the checkpoint."""
        info = dist.info()
        per_rank = dist.all_gather_objects({"rng": rng.capture(trainer.generators),
                                            "loader": self.source.state_dict()})
        if info.is_main:
            state = trainer.state_dict()
            state.update(
                rng=[r["rng"] for r in per_rank], loader=[r["loader"] for r in per_rank],
                world_size=info.world_size, accumulation=self.identity.accumulation, seed=self.identity.seed,
                run_id=self.run_id, config=gin.operative_config_str(),
            )
            path = ckpt.save(self.output_dir, trainer.iteration, state, self.config.keep)
            logging.info("saved %s", path)
        dist.barrier()
