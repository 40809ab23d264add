"""Training checkpoints: atomic, the last two usable ones kept, unusable ones moved aside.

A checkpoint is `checkpoints/ckpt_<iteration:09d>.pth` under the run's output directory and
holds everything an exact resume needs: weights, optimizer, EMA, the per-rank RNG and loader
states, the next iteration, the run's identity and the operative config. Rank 0 writes it
(atomically: a crash leaves the previous file intact); every rank reads it and restores its own
entries. Nothing here deletes a file that is not a usable checkpoint older than one just written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from absl import logging

from mmgin import dist, io
from mmgin.model.loading import non_finite

CHECKPOINT_DIR = "checkpoints"
UNUSABLE_DIR = "unusable"
_NAME = re.compile(r"^ckpt_(\d{9})\.pth$")

# Why a checkpoint cannot continue this run (None: it can); Checkpointing supplies the run's checks.
UsabilityCheck = Callable[[Mapping[str, Any]], "str | None"]


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says what was tried."""


def checkpoint_path(output_dir: str | Path, iteration: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"ckpt_{iteration:09d}.pth"


def _iteration(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=_iteration, reverse=True)


def move_aside(path: Path, folder: Path) -> Path:
    """Moves ``path`` into ``folder`` under a name no file there has: set aside, never lost."""
    folder.mkdir(parents=True, exist_ok=True)
    target, copy = folder / path.name, 1
    while target.exists():
        target, copy = folder / f"{path.name}.{copy}", copy + 1
    os.rename(path, target)
    return target


def save(output_dir: str | Path, iteration: int, state: Mapping[str, Any], keep: int = 2) -> Path:
    """Writes `state` as the checkpoint of `iteration` (rank 0 only) and prunes older ones.

    Pruning keeps `keep` checkpoints counting the one just written (readable: written
    atomically) and removes only older ones, all of which the run found usable when it started
    (`load_latest` moves the others aside) or wrote itself. Refuses (CheckpointError) to save
    non-finite network weights: a checkpoint must always be a state the run can continue from.
    """
    bad = non_finite(state["network"])
    if bad:
        raise CheckpointError(
            f"not saving the checkpoint of iteration {iteration}: non-finite values in "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. The previous checkpoint is kept; "
            "lower the learning rate or check the data for NaN"
        )
    path = checkpoint_path(output_dir, iteration)
    io.save_torch(dict(state), path)
    older = [p for p in list_checkpoints(output_dir) if _iteration(p) < iteration]
    for old in older[max(keep, 1) - 1:]:
        old.unlink(missing_ok=True)
    # Half-written temp files of a process killed mid-write (checkpoint-sized each): only
    # rank 0 writes here, one file at a time, so any left now is stale.
    io.remove_stale_temps(path.parent / "ckpt_*.pth", name_is_glob=True)
    return path


def _load(path: Path) -> dict[str, Any]:
    """A checkpoint's state; CheckpointError saying why not (the caller names the file)."""
    try:
        state = io.load_torch(path, mmap=True)  # mmgin wrote it: zip format, safe to map
    except Exception as e:  # a truncated zip, a bad pickle, a foreign file
        raise CheckpointError(f"unreadable ({io.unreadable_reason(e)})") from None
    if not isinstance(state, dict) or "iteration" not in state or "network" not in state:
        raise CheckpointError("not an mmgin training checkpoint (no 'iteration'/'network')")
    return state


def _examine(path: Path, unusable: UsabilityCheck) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None) for a usable checkpoint, (None, why not) otherwise."""
    try:
        state = _load(path)
    except CheckpointError as e:
        return None, str(e)
    reason = unusable(state)
    return (None, reason) if reason is not None else (state, None)


def _none_usable(output_dir: Path, problems: list[tuple[Path, str]]) -> str:
    listed = "\n".join(f"  {p.name}: {reason}" for p, reason in problems)
    return (
        f"no checkpoint in {output_dir / CHECKPOINT_DIR} can continue this run (nothing was changed):\n"
        f"{listed}\nTo resume, run with the settings these checkpoints were written with. To start "
        f"over, move {output_dir} away or set OUTPUT_DIR to a new folder."
    )


def load_latest(output_dir: str | Path, unusable: UsabilityCheck = lambda state: None
                ) -> tuple[Path, dict[str, Any]] | None:
    """The newest usable checkpoint of a run (readable, and `unusable` has no objection).

    Rank 0 examines every checkpoint. Beside a usable one, each unusable one is moved to
    `checkpoints/unusable/` with a warning saying why (never deleted), so retention only ever
    counts usable files. When none is usable, nothing is moved and every rank raises
    CheckpointError listing each file's reason and how to start over: a run never starts from
    scratch over checkpoints it could not use. Rank 0 chooses and broadcasts its choice, so all
    ranks resume from the same file. None when the run has no checkpoint at all.
    """
    output_dir = Path(output_dir)
    chosen: str | None = None
    state: dict[str, Any] | None = None
    refusal: str | None = None
    if dist.is_main():
        examined = [(path, *_examine(path, unusable)) for path in list_checkpoints(output_dir)]
        problems = [(path, reason) for path, _, reason in examined if reason is not None]
        usable = [(path, found) for path, found, reason in examined if reason is None]
        if usable:
            chosen, state = str(usable[0][0]), usable[0][1]
            for path, reason in problems:
                moved = move_aside(path, path.parent / UNUSABLE_DIR)
                logging.warning("skipped checkpoint %s, %s; moved it to %s", path, reason, moved)
        elif problems:
            refusal = _none_usable(output_dir, problems)
    chosen, refusal = dist.broadcast_object((chosen, refusal))
    if refusal is not None:
        raise CheckpointError(refusal)
    if chosen is None:
        return None
    if state is None:
        state, reason = _examine(Path(chosen), lambda state: None)
        if reason is not None:
            raise CheckpointError(f"{chosen}: {reason} on rank {dist.info().rank} (rank 0 read it)")
    return Path(chosen), state


def existing_file(path: str | Path, setting: str) -> Path:
    """The file a setting names (e.g. 'CheckpointConfig.resume_from'); a CheckpointError when
    there is none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{setting}={path} does not exist")
    return path


def load_file(path: str | Path, unusable: UsabilityCheck = lambda state: None) -> dict[str, Any]:
    """An explicitly named checkpoint (`CheckpointConfig.resume_from=`); unreadable or unusable
    is an error."""
    path = existing_file(path, "CheckpointConfig.resume_from")
    state, reason = _examine(path, unusable)
    if reason is not None:
        raise CheckpointError(f"CheckpointConfig.resume_from={path}: {reason}")
    return state
