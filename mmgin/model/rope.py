"""Rotary position embedding on adjacent channel pairs, always in float32."""

from __future__ import annotations

import torch


def rope_rotations(
    length: int, head_dim: int, theta: float = 10000.0, freq_scaling: float = 1.0
) -> torch.Tensor:
    """Rotation matrices (1, length, head_dim/2, 2, 2) for positions 0..length-1.

    Computed on the CPU in float32 (the released model's tables were); ``freq_scaling``
    stretches a short stream (the 64 CLIP frames) over the latent's time axis.
    """
    positions = torch.arange(length, dtype=torch.float32, device="cpu")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
    freqs = 1.0 / (theta**exponents)
    freqs = freqs * freq_scaling
    angles = positions[:, None] * freqs[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).view(1, length, head_dim // 2, 2, 2)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotates each pair (x[2j], x[2j+1]) of x (B, H, N, head_dim) by the table ``rot``."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        pairs = x.float().view(*x.shape[:-1], -1, 1, 2)
        out = rot[..., 0] * pairs[..., 0] + rot[..., 1] * pairs[..., 1]
        return out.reshape(x.shape).to(x.dtype)
