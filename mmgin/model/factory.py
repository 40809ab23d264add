"""Builds a named MMAudio network, optionally from a checkpoint in the released format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gin
import torch

from mmgin import weights
from mmgin.model.network import VARIANTS, MMAudio
from mmgin.model.sequence import SequenceConfig


def network_kwargs(name: str, duration: float = 8.0) -> dict[str, Any]:
    """Constructor arguments of the variant ``name`` for clips of ``duration`` seconds."""
    if name not in VARIANTS:
        raise ValueError(f"unknown network {name!r}; expected one of {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    seq = SequenceConfig.for_mode(variant.mode, duration)
    return dict(
        latent_dim=variant.latent_dim,
        hidden_dim=variant.hidden_dim,
        depth=variant.depth,
        fused_depth=variant.fused_depth,
        num_heads=variant.num_heads,
        latent_seq_len=seq.latent_seq_len,
        clip_seq_len=seq.clip_seq_len,
        sync_seq_len=seq.sync_seq_len,
        text_seq_len=seq.text_seq_len,
        v2=variant.v2,
    )


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a released network file: a bare state dict, tensors only (weights_only)."""
    path = weights.resolve(path)
    state = weights.load(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a bare state dict of tensors (the released network format); "
            "extract the network weights from a training checkpoint first"
        )
    return state


@gin.configurable
def get_network(
    name: str,
    checkpoint: str | Path | None = None,
    duration: float = 8.0,
    **overrides: Any,
) -> MMAudio:
    """The network ``name`` (small_16k, small_44k, medium_44k, large_44k, large_44k_v2,
    tiny_16k, tiny_44k) on the CPU.

    With ``checkpoint`` the module is built on the meta device and adopts the loaded tensors,
    so no time is spent on an initialisation that the weights replace. ``overrides`` go to the
    MMAudio constructor (e.g. activation_checkpointing=True, latent_mean=...).
    """
    if checkpoint is None:
        return MMAudio(**(network_kwargs(name, duration) | overrides))
    state = load_checkpoint(checkpoint)
    try:
        return network_from_state_dict(name, state, duration, **overrides)
    except ValueError as e:
        raise ValueError(f"{checkpoint}: {e}") from e


def network_from_state_dict(
    name: str, state: dict[str, torch.Tensor], duration: float = 8.0, **overrides: Any
) -> MMAudio:
    """The network ``name`` adopting the tensors of a released-format ``state`` dict.

    The module is built on the meta device, so no time is spent on an initialisation that the
    weights replace and no second copy of a billion parameters is ever held.
    """
    with torch.device("meta"):
        network = MMAudio(**(network_kwargs(name, duration) | overrides))
    try:
        network.load_weights(state, assign=True)
    except RuntimeError as e:
        raise ValueError(f"this state dict does not fit network {name!r}: {e}") from e
    return network
