"""Networks from files: the one reader of every layout that holds a network's weights.

Four layouts hold them: a released mmaudio_<name>.pth and an EMA file (ema_final.pth,
SynthesizeEMA's output), both a bare state dict of tensors; an mmgin training checkpoint
({'network', 'iteration', ...}); and the reference trainer's <exp>_ckpt_last.pth ({'it',
'weights', 'optimizer', 'scheduler', ...}). They are told apart by their keys, so this module
needs nothing of the trainers that write them. Every error names the setting that gave the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mmgin import io, weights
from mmgin.model.network import MMAudio, network_kwargs

REFERENCE_CHECKPOINT_KEYS = ("it", "weights", "optimizer", "scheduler")
ACCEPTED = ("give a released mmaudio_<name>.pth, an EMA file (ema_final.pth, SynthesizeEMA's), an "
            "mmgin training checkpoint (checkpoints/ckpt_*.pth) or the reference's <exp>_ckpt_last.pth")


class NetworkFileError(ValueError):
    """A file that holds no usable network; the message starts with `<setting>=<path>: `."""


@dataclass
class NetworkWeights:
    """A network's tensors in the released layout, and the training iteration (None if unknown)."""

    state: dict[str, torch.Tensor]
    iteration: int | None


def is_reference_checkpoint(state: Any) -> bool:
    """Whether a loaded file is the reference trainer's <exp>_ckpt_last.pth."""
    return isinstance(state, Mapping) and all(k in state for k in REFERENCE_CHECKPOINT_KEYS)


def _is_state_dict(state: Any) -> bool:
    """Whether a loaded file is a bare state dict of tensors (released or EMA file)."""
    return (isinstance(state, Mapping) and bool(state)
            and all(isinstance(v, torch.Tensor) for v in state.values()))


def _held_network(state: Any) -> NetworkWeights | None:
    """The network a loaded file holds, or None when its layout is none of the four."""
    if isinstance(state, Mapping) and "network" in state and "iteration" in state:  # mmgin's training checkpoint
        found = NetworkWeights(state["network"], int(state["iteration"]))
    elif is_reference_checkpoint(state):
        found = NetworkWeights(state["weights"], int(state["it"]))
    elif _is_state_dict(state):
        return NetworkWeights(dict(state), None)
    else:
        return None
    return found if _is_state_dict(found.state) else None


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding NaN or inf (empty when all are finite)."""
    return [k for k, v in tensors.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]


def _describe(state: Any) -> str:
    if isinstance(state, Mapping):
        keys = [str(k) for k in list(state)[:5]]
        return f"a dict of {', '.join(keys) + (', ...' if len(state) > 5 else '') or 'nothing'}"
    return f"a {type(state).__name__}"


def find_network_file(path: str | Path, setting: str) -> Path:
    """Where the file `setting` names is (mmgin.weights.resolve); a missing one is an error
    naming the setting, what it may hold and where weights are looked for."""
    try:
        return weights.resolve(path)
    except weights.MissingWeightsError as missing:
        raise weights.MissingWeightsError(
            f"{setting}={path} does not exist: {ACCEPTED}.\n{missing}") from None


def read_network_weights(path: str | Path, setting: str) -> NetworkWeights:
    """The network tensors and iteration that the file `path` (found by mmgin.weights.resolve)
    holds, in any of the four layouts; `setting` (e.g. 'Evaluate.weights') names it in errors."""
    found = find_network_file(path, setting)
    try:
        state = io.load_torch(found)
    except Exception as error:  # torch's own text may advise unsafe loading: never shown
        item = weights.lookup(found)  # a registered download: say how to fetch it again
        fetch = f"; delete it and fetch it again.\n{weights.how_to_get(item)}" if item else ""
        raise NetworkFileError(f"{setting}={path}: unreadable ({io.unreadable_reason(error)}); "
                               f"{ACCEPTED}{fetch}") from None
    network = _held_network(state)
    if network is None:
        raise NetworkFileError(f"{setting}={path}: holds no network weights ({_describe(state)}); {ACCEPTED}")
    return network


def _fit(network: MMAudio, state: dict[str, torch.Tensor], source: str, assign: bool) -> None:
    """`state` into `network`, strictly; another variant's is one NetworkFileError."""
    mismatch = network.weights_mismatch(state)
    if mismatch is not None:
        raise NetworkFileError(f"{source}: {mismatch}")
    network.load_weights(state, assign=assign)


def load_weights_into(network: MMAudio, path: str | Path, setting: str, *,
                      assign: bool = False) -> int | None:
    """Copies the weights of the file `path` into `network` (`assign`: adopts them, for a network
    built on the meta device); returns the file's iteration."""
    found = read_network_weights(path, setting)
    _fit(network, found.state, f"{setting}={path}", assign=assign)
    return found.iteration


def network_from_state_dict(name: str, state: dict[str, torch.Tensor], duration: float = 8.0, *,
                            source: str = "the state dict", **overrides: Any) -> MMAudio:
    """The network `name` adopting the tensors of a released-layout `state` (`source` names
    them in errors).

    The module is built on the meta device, so no time is spent on an initialisation that the
    weights replace and no second copy of a billion parameters is ever held. Non-finite
    tensors are refused: a network saved before its statistics or null text were set would
    generate NaN.
    """
    bad = non_finite(state)
    if bad:
        raise NetworkFileError(f"{source}: non-finite values in {', '.join(bad[:5])}: not a trained "
                               f"network (saved before its statistics or null text were set?); {ACCEPTED}")
    with torch.device("meta"):
        network = MMAudio(**(network_kwargs(name, duration) | overrides))
    _fit(network, state, source, assign=True)
    return network


def load_network(name: str, path: str | Path, setting: str, duration: float = 8.0,
                 **overrides: Any) -> tuple[MMAudio, int | None]:
    """The network `name` (on the CPU) holding the weights of the file `path`, and the file's
    iteration; `overrides` go to the MMAudio constructor."""
    found = read_network_weights(path, setting)
    network = network_from_state_dict(name, found.state, duration, source=f"{setting}={path}", **overrides)
    return network, found.iteration
