"""Builds a named MMAudio network, freshly initialised or from a file of its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gin

from mmgin.model.loading import load_network
from mmgin.model.network import MMAudio, network_kwargs


@gin.configurable
def get_network(
    name: str,
    checkpoint: str | Path | None = None,
    duration: float = 8.0,
    **overrides: Any,
) -> MMAudio:
    """The network ``name`` (small_16k, small_44k, medium_44k, large_44k, large_44k_v2,
    tiny_16k, tiny_44k) on the CPU.

    ``checkpoint`` is any file mmgin.model.loading reads (released, EMA, training checkpoint);
    the module is then built on the meta device and adopts the loaded tensors, so no time is
    spent on an initialisation that the weights replace. ``overrides`` go to the MMAudio
    constructor (e.g. activation_checkpointing=True, latent_mean=...).
    """
    if checkpoint is None:
        return MMAudio(**(network_kwargs(name, duration) | overrides))
    return load_network(name, checkpoint, "get_network.checkpoint", duration, **overrides)[0]
