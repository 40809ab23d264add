"""Feed-forward building blocks of the MMAudio network, named as in the released weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d applied to (B, N, D) sequences, so it slots in wherever a Linear would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """SwiGLU keeps the parameter count of a plain MLP: 2/3 of the width, rounded up."""
    hidden = int(2 * hidden_dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MLP(nn.Module):
    """Bias-free SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvMLP(nn.Module):
    """SwiGLU whose three projections are bias-free convolutions along the sequence."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_dim, multiple_of)
        padding = kernel_size // 2
        self.w1 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of t in [0, 1] followed by an MLP.

    The frequencies are (10000 / max_period) / 10000^(2i/F), formed in float32 in exactly this
    order: with max_period=1 (the v2 network) they reach 1e4, and the float32 rounding of
    t * freq is part of the released model's behaviour.
    """

    def __init__(self, dim: int, frequency_embedding_size: int, max_period: float):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, dim),
            nn.SiLU(),
            nn.Linear(dim, dim),
        )
        self.register_buffer("freqs", self.compute_freqs(), persistent=False)

    def compute_freqs(self) -> torch.Tensor:
        size = self.frequency_embedding_size
        exponents = torch.arange(0, size, 2, dtype=torch.float32, device="cpu") / size
        return (10000 / self.max_period) * (1.0 / (10000**exponents))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].float() * self.freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(embedding.to(t.dtype))
