"""Continuing a run of the reference trainer from its training checkpoint.

The reference writes ``<exp>_ckpt_last.pth`` = {'it', 'weights', 'optimizer', 'scheduler',
'ema'}: the network's state dict, AdamW's state dict (one group of the trainable parameters in
module order, which is this network's order too), the SequentialLR of warmup then step decay,
and the post-hoc EMA module's state dict (profiles under ``ema_models.<i>.ema_model.<key>``,
their step under ``ema_models.<i>._extra_state``). Everything that determines the next update
carries over: weights, optimizer moments, the schedule position and the iteration (the number
of scheduler steps taken, ``scheduler['last_epoch']``), and the EMA profiles. What the file
does not hold cannot: the data order and the noise restart from the run's seed, and the EMA
snapshots already written stay in the reference run's ema_ckpts/.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import torch
from absl import logging

from mmgin import io
from mmgin.model.loading import REFERENCE_CHECKPOINT_KEYS, is_reference_checkpoint
from mmgin.train.checkpoint import CheckpointError, existing_file
from mmgin.train.ema import PostHocEMA
from mmgin.train.trainer import OPTIMIZER_SETTINGS, Trainer


def load_weights(network: torch.nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """The checkpoint's weights into ``network``; another variant's is one short error."""
    try:
        network.load_weights(state["weights"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {e}; set get_network.name to the reference run's") from None


def continue_from(trainer: Trainer, state: Mapping[str, Any], path: Path) -> None:
    """Puts the reference checkpoint's optimizer, schedule, iteration and EMA into ``trainer``,
    whose network already holds the checkpoint's weights."""
    _load_optimizer(trainer, state["optimizer"], path)
    iteration = int(state["scheduler"]["last_epoch"])
    _set_schedule(trainer, iteration, state["scheduler"], path)
    if trainer.ema is not None:
        _load_ema(trainer.ema, state.get("ema"), path, iteration)
    logging.info(
        "continuing the reference run of %s at iteration %d (its 'it' is %s): weights, optimizer, "
        "schedule and EMA carried over; the reference keeps no data-loader or RNG state, so the data "
        "order and the noise restart from Train.seed", path, iteration, state["it"],
    )


def _load_optimizer(trainer: Trainer, saved: Mapping[str, Any], path: Path) -> None:
    groups = saved.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) != len(trainer.params):
        counts = [len(g["params"]) for g in groups]
        raise CheckpointError(
            f"{path}: its optimizer has parameter groups of {counts} tensors, this network trains "
            f"{len(trainer.params)} in one group: the checkpoint is of another network variant"
        )
    for index, param in zip(groups[0]["params"], trainer.params):
        moments = saved["state"].get(index, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in moments and tuple(moments[name].shape) != tuple(param.shape):
                raise CheckpointError(
                    f"{path}: optimizer {name} of parameter {index} has shape {tuple(moments[name].shape)}, "
                    f"this network's is {tuple(param.shape)}: the checkpoint is of another network variant"
                )
    # The reference run must continue as it was: its settings must be this run's.
    current = trainer.optimizer.param_groups[0]
    for key, setting in OPTIMIZER_SETTINGS.items():
        ours, theirs = current.get(key), groups[0].get(key)
        if theirs is not None and not _same(ours, theirs):
            raise CheckpointError(
                f"{path} was trained with {setting} = {_plain(theirs)}, this run sets {_plain(ours)}; "
                f"set {setting} = {_plain(theirs)} to continue that run"
            )
    trainer.optimizer.load_state_dict(saved)


def _set_schedule(trainer: Trainer, iteration: int, saved: Mapping[str, Any], path: Path) -> None:
    """Moves the run's schedule to ``iteration``; the reference's rate there must be the run's."""
    trainer.set_iteration(iteration)
    theirs = saved.get("_last_lr")
    if theirs is not None and not _same(trainer.learning_rate, float(theirs[0])):
        raise CheckpointError(
            f"{path}: the reference run's learning rate at iteration {iteration} is {float(theirs[0]):.6g}, "
            f"this run's schedule gives {trainer.learning_rate:.6g} there; set the schedule (e.g. "
            "WarmupStepSchedule.warmup_steps / milestones / gamma) as the reference run had it"
        )


def _ema_progress(saved: Mapping[str, Any], path: Path, iteration: int) -> tuple[int, bool]:
    """(step, initted) of the reference's EMA: its `_extra_state`, else `step`/`initted` buffers
    (ema-pytorch's layout), else the iteration (every step updated it, as Train does)."""
    extra = saved.get("ema_models.0._extra_state")
    if isinstance(extra, Mapping) and "step" in extra:
        return int(extra["step"]), bool(extra.get("initted", True))
    if "ema_models.0.step" in saved:
        return int(saved["ema_models.0.step"]), bool(saved.get("ema_models.0.initted", True))
    logging.warning("%s records no EMA step; taking the iteration, %d", path, iteration)
    return iteration, True


def _load_ema(ema: PostHocEMA, saved: Mapping[str, Any] | None, path: Path, iteration: int) -> None:
    if saved is None:
        logging.warning("%s has no EMA state: the EMA profiles start from the current weights", path)
        return
    profiles = []
    for index in range(len(ema.sigma_rels)):
        prefix = f"ema_models.{index}.ema_model."
        missing = [k for k in ema.keys if prefix + k not in saved]
        if missing:
            raise CheckpointError(
                f"{path}: its EMA has no profile {index} entries like {prefix}{missing[0]}; this run keeps "
                f"{len(ema.sigma_rels)} profiles (EMAConfig.sigma_rels = {ema.sigma_rels})"
            )
        profiles.append([saved[prefix + k] for k in ema.keys])
    step, initted = _ema_progress(saved, path, iteration)
    ema.load_state_dict({
        "step": step, "initted": initted,
        "sigma_rels": list(ema.sigma_rels), "keys": list(ema.keys), "profiles": profiles,
    })
    logging.info("EMA profiles 0..%d of %s taken as sigma_rel %s (the reference does not record them)",
                 len(profiles) - 1, path, ema.sigma_rels)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def _plain(value: Any) -> str:
    return str(tuple(float(v) for v in value)) if isinstance(value, (tuple, list)) else f"{float(value):g}"


def load(path: str | Path) -> dict[str, Any]:
    """A reference training checkpoint; anything else is a CheckpointError saying what it is."""
    path = existing_file(path, "CheckpointConfig.continue_reference_run")
    try:
        state = io.load_torch(path, mmap=True)
    except Exception as e:  # torch's own text may advise unsafe loading: never shown
        raise CheckpointError(f"{path} is unreadable ({io.unreadable_reason(e)})") from None
    if not is_reference_checkpoint(state):
        raise CheckpointError(
            f"{path} is not a reference training checkpoint (<exp>_ckpt_last.pth with "
            f"{', '.join(REFERENCE_CHECKPOINT_KEYS)}); for network weights alone use CheckpointConfig.weights"
        )
    return state
