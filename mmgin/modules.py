"""Building the frozen pretrained modules (audio codec, vision encoders): strict loading of a
released file, freezing, and the seeded weights of the tiny test variants.

Tiny variants have no released weights: they are filled from a fixed-seed generator so every
process and run builds the same values without touching the global RNG. Two fill schemes
exist, each pinned by fixtures: `seeded_init` (the vision encoders) and `seeded_normal_` (the
audio codec); they draw different numbers and are not interchangeable.
"""

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
            f"{source} does not fit {type(module).__name__}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of the wrong shape (e.g. {wrong[:3]}). "
            "Check that the file is the right release and that the mode and size match."
        )
    module.load_state_dict(state, strict=True, assign=assign)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: these modules are fixed, never trained here."""
    return module.eval().requires_grad_(False)


@torch.no_grad()
def seeded_init(module: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Fills every parameter from one seeded generator: LayerNorm weights 1, biases 0, else
    N(0, std²), visiting parameters in sorted name order (the vision encoders' scheme)."""
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


@torch.no_grad()
def seeded_normal_(module: nn.Module, seed: int, std_of: Mapping[str, float]) -> nn.Module:
    """Fills the parameters named in ``std_of`` with N(0, std²), in the module's parameter
    order, from one generator seeded with ``seed``; the others keep their values (the audio
    codec's scheme)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if name in std_of:
            param.copy_(torch.randn(param.shape, generator=generator) * std_of[name])
    return module
