"""Building encoder modules: strict checkpoint loading, freezing, seeded tiny weights."""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    assign: bool = False,
) -> None:
    """``load_state_dict(strict=True)`` with a message that names the file and the key sets."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} does not match {type(module).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of the wrong shape (e.g. {wrong[:3]}). "
            "Check that the file is the right release and the model size matches."
        )
    module.load_state_dict(state, strict=True, assign=assign)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the encoders are fixed feature extractors."""
    return module.eval().requires_grad_(False)


@torch.no_grad()
def seeded_init(module: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Fills every parameter from one seeded generator: norm weights 1, biases 0, else N(0, std²).

    Tiny encoders have no released weights; this gives them the same values in every process
    and run without touching the global RNG. Parameters are visited in sorted name order.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    norm_weights = {
        f"{name}.weight" if name else "weight"
        for name, child in module.named_modules()
        if isinstance(child, nn.LayerNorm) and child.weight is not None
    }
    named = dict(module.named_parameters())
    for name in sorted(named):
        param = named[name]
        if name in norm_weights:
            param.fill_(1.0)
        elif name.endswith("bias"):
            param.zero_()
        else:
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(noise * std)
    return module
