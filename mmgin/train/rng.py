"""Every random state a training process owns, as a checkpointable dict.

A resumed run must draw exactly what an uninterrupted run would have drawn, so the checkpoint
holds the torch CPU and CUDA states, the step generators (one per micro-step slot, on the
device), numpy and python `random`, per rank. The states are stored as tensors and plain
containers so `torch.load(weights_only=True)` reads them back.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch


def capture(generators: Sequence[torch.Generator]) -> dict[str, Any]:
    keys, position, has_gauss, cached_gaussian = np.random.get_state()[1:]
    version, python_state, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "state": list(python_state), "gauss_next": gauss_next},
    }


def restore(state: dict[str, Any], generators: Sequence[torch.Generator]) -> None:
    if len(state["generators"]) != len(generators):
        raise ValueError(
            f"checkpoint has {len(state['generators'])} step generators on this rank, the run "
            f"{len(generators)}: resume with the same world size and micro-batch size"
        )
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state["torch_cuda"]:
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)
    saved_np = state["numpy"]
    np.random.set_state((
        "MT19937", saved_np["keys"].numpy().astype(np.uint32), saved_np["position"],
        saved_np["has_gauss"], saved_np["cached_gaussian"],
    ))
    saved_py = state["python"]
    random.setstate((saved_py["version"], tuple(saved_py["state"]), saved_py["gauss_next"]))
