"""Magnitude-preserving layers of EDM2 (Karras et al. 2024), as the MMAudio VAE uses them.

Numerics follow the reference exactly (norms in float32, the same scalar factors), because the
VAE latents feed the flow network and the released statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mp_normalize(x: torch.Tensor, dim: int | list[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + ||x|| / sqrt(N)) over ``dim`` (default: all but the first), norm in >= float32."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm_dtype = torch.promote_types(x.dtype, torch.float32)
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=norm_dtype)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled to unit output magnitude for unit-variance input."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving blend (1-t)·a + t·b."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1D(nn.Module):
    """Bias-free Conv1d (padding k//2) whose filters are forced to unit norm once at load time.

    The released weights are stored before normalisation; ``remove_weight_norm`` must run after
    loading, and ``forward`` refuses to run before it (as the reference asserts).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.weight_norm_removed = False

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float = 1) -> torch.Tensor:
        if not self.weight_norm_removed:
            raise RuntimeError("MPConv1D: call remove_weight_norm() after loading weights, before inference")
        w = self.weight if isinstance(gain, (int, float)) and gain == 1 else self.weight * gain
        return F.conv1d(x, w.to(x.dtype), padding=(w.shape[-1] // 2,))

    @torch.no_grad()
    def remove_weight_norm(self) -> None:
        w = mp_normalize(self.weight.to(torch.float32))
        w = w / math.sqrt(w[0].numel())
        self.weight.copy_(w.to(self.weight.dtype))
        self.weight_norm_removed = True
