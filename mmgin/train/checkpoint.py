"""Training checkpoints: atomic, the last two kept, a corrupt newest one falls back.

A checkpoint is `checkpoints/ckpt_<iteration:09d>.pth` under the run's output directory and
holds everything an exact resume needs: weights, optimizer, scheduler, EMA, the per-rank RNG
and loader states, the next iteration and the operative config. Rank 0 writes it (atomically:
a crash leaves the previous file intact); every rank reads it and restores its own entries.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from absl import logging

from mmgin import dist, io
from mmgin import weights as weight_files

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{9})\.pth$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says what was tried."""


def checkpoint_path(output_dir: str | Path, iteration: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"ckpt_{iteration:09d}.pth"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def all_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding NaN or inf (empty when all are finite)."""
    return [k for k, v in tensors.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]


def save(output_dir: str | Path, iteration: int, state: Mapping[str, Any], keep: int = 2) -> Path:
    """Writes `state` as the checkpoint of `iteration` (rank 0 only) and prunes older ones.

    Refuses (CheckpointError) to save non-finite network weights: a checkpoint must always be a
    state the run can continue from.
    """
    bad = all_finite(state["network"])
    if bad:
        raise CheckpointError(
            f"not saving the checkpoint of iteration {iteration}: non-finite values in "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. The previous checkpoint is kept; "
            "lower the learning rate or check the data for NaN"
        )
    path = checkpoint_path(output_dir, iteration)
    io.save_torch(dict(state), path)
    for old in list_checkpoints(output_dir)[max(keep, 1):]:
        old.unlink(missing_ok=True)
    # Half-written temp files of a process killed mid-write (checkpoint-sized each): only
    # rank 0 writes here, one file at a time, so any left now is stale.
    io.remove_stale_temps(path.parent / "ckpt_*.pth", name_is_glob=True)
    return path


def _load(path: Path) -> dict[str, Any]:
    state = io.load_torch(path, mmap=True)  # mmgin wrote it: zip format, safe to map
    if not isinstance(state, dict) or "iteration" not in state or "network" not in state:
        raise CheckpointError(f"{path} is not an mmgin training checkpoint (no 'iteration'/'network')")
    return state


def load_latest(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run, trying older ones when the newest is corrupt.

    Rank 0 chooses and broadcasts its choice, so all ranks resume from the same file even if
    the file system shows them different listings. None when the run has no checkpoint.
    """
    chosen: str | None = None
    state: dict[str, Any] | None = None
    if dist.is_main():
        for path in list_checkpoints(output_dir):
            try:
                state = _load(path)
            except Exception as e:  # a truncated zip, a bad pickle, a foreign file
                logging.warning("checkpoint %s is unreadable (%s: %s); trying the previous one",
                                path, type(e).__name__, str(e)[:200])
                continue
            chosen = str(path)
            break
        if chosen is None and list_checkpoints(output_dir):
            logging.warning("no readable checkpoint in %s; starting from scratch",
                            Path(output_dir) / CHECKPOINT_DIR)
    chosen = dist.broadcast_object(chosen)
    if chosen is None:
        return None
    if state is None:
        state = _load(Path(chosen))
    return Path(chosen), state


def load_file(path: str | Path) -> dict[str, Any]:
    """An explicitly named checkpoint (`Train.checkpoint=`); unreadable is an error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Train.checkpoint={path} does not exist")
    try:
        return _load(path)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"Train.checkpoint={path} is unreadable ({type(e).__name__}: {e})") from e


def network_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Network weights from any file that holds them.

    A bare state dict (released mmaudio_*.pth, the reference's <exp>_last.pth and
    <exp>_ema_final.pth, mmgin's ema_final.pth and exports), an mmgin training checkpoint
    ('network') or a reference training checkpoint (<exp>_ckpt_last.pth: 'weights').
    """
    try:
        path = weight_files.resolve(path)
    except weight_files.MissingWeightsError as missing:
        raise CheckpointError(f"Train.weights={path} does not exist.\n{missing}") from None
    state = io.load_torch(path)
    if isinstance(state, dict) and "network" in state and "iteration" in state:
        return state["network"]
    if isinstance(state, dict) and "weights" in state and "it" in state:
        return state["weights"]
    if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise CheckpointError(
        f"Train.weights={path} is neither a network file (a bare state dict: released "
        "mmaudio_*.pth, <exp>_last.pth, ema_final.pth) nor a training checkpoint (mmgin's, or the "
        "reference's <exp>_ckpt_last.pth)"
    )
