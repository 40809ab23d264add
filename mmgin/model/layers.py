"""Feed-forward building blocks of the MMAudio network, named as in the released weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def shifted_windows(x: torch.Tensor, kernel_size: int, padding: int) -> torch.Tensor:
    """(B, N, C) -> (B, N', kernel_size * C): row n holds the zero-padded inputs n-p .. n-p+k-1.

    Channel j * C + c of the result is input channel c at window offset j (im2col), so a
    product with the conv weight laid out (out, k, in) is the convolution.
    """
    padded = F.pad(x, (0, 0, padding, padding))
    length = padded.shape[1] - kernel_size + 1
    return torch.cat([padded[:, j : j + length] for j in range(kernel_size)], dim=-1)


def shifted_sum(taps: torch.Tensor, kernel_size: int, padding: int) -> torch.Tensor:
    """(B, N, k * C) -> (B, N', C): out[n] = sum_j taps[n + j - p, block j], zero-padded.

    The transpose of `shifted_windows`: with taps = x @ W_j for every offset j, the sum is the
    convolution. The k partial products are summed in float32.
    """
    padded = F.pad(taps, (0, 0, padding, padding)).float()
    length = padded.shape[1] - kernel_size + 1
    channels = taps.shape[-1] // kernel_size
    out = padded[:, 0:length, 0:channels]
    for j in range(1, kernel_size):
        out = out + padded[:, j : j + length, j * channels : (j + 1) * channels]
    return out


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d applied to (B, N, D) sequences, so it slots in wherever a Linear would.

    The weight keeps the Conv1d layout (out, in, k) of the released files; the forward is one
    matrix product on the channel-last activations instead of a cuDNN convolution between two
    transposes. A layer that widens (in < out) multiplies the k shifted input windows by the
    (out, k * in) weight; one that narrows or keeps the width multiplies the input by the
    (k * out, in) weight and sums the k shifted partial outputs (in float32). Either way the
    tensor that is shifted is the narrower one, which keeps the memory traffic and the
    activations saved for the backward pass small.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        plain = (self.stride, self.dilation, self.groups, self.padding_mode) == ((1,), (1,), 1, "zeros")
        if not plain or isinstance(self.padding, str):
            raise ValueError(
                "ChannelLastConv1d supports stride 1, dilation 1, groups 1 and integer zero "
                f"padding only; got stride={self.stride} dilation={self.dilation} "
                f"groups={self.groups} padding={self.padding!r} mode={self.padding_mode!r}"
            )

    def window_weight(self) -> torch.Tensor:
        """The weight as (out, k * in), matching the channel order of `shifted_windows`."""
        return self.weight.permute(0, 2, 1).reshape(self.out_channels, -1)

    def tap_weight(self) -> torch.Tensor:
        """The weight as (k * out, in): row j * out + o is the tap W[o, :, j]."""
        return self.weight.permute(2, 0, 1).reshape(-1, self.in_channels)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_windows(x, self.kernel_size[0], self.padding[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels < self.out_channels:
            return F.linear(self.windows(x), self.window_weight(), self.bias)
        out = shifted_sum(F.linear(x, self.tap_weight()), self.kernel_size[0], self.padding[0])
        return out if self.bias is None else out + self.bias


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """SwiGLU keeps the parameter count of a plain MLP: 2/3 of the width, rounded up."""
    hidden = int(2 * hidden_dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def swiglu(hidden: torch.Tensor) -> torch.Tensor:
    """silu(a) * b for hidden = [a | b] along the last dimension."""
    gate, value = hidden.chunk(2, dim=-1)
    return F.silu(gate) * value


class MLP(nn.Module):
    """Bias-free SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, multiple_of: int = 256):
        super().__init__()
        hidden = swiglu_hidden_dim(hidden_dim, multiple_of)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # w1 and w3 read the same input: one product with the stacked weights.
        hidden = F.linear(x, torch.cat([self.w1.weight, self.w3.weight]))
        return self.w2(swiglu(hidden))


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
        # One set of windows and one product with the stacked w1 | w3 weights.
        weight = torch.cat([self.w1.window_weight(), self.w3.window_weight()])
        hidden = F.linear(self.w1.windows(x), weight)
        return self.w2(swiglu(hidden))


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
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("freqs", self.compute_freqs(), persistent=False)

    def compute_freqs(self) -> torch.Tensor:
        size = self.frequency_embedding_size
        exponents = torch.arange(0, size, 2, dtype=torch.float32, device="cpu") / size
        return (10000 / self.max_period) * (1.0 / (10000**exponents))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t[:, None].float() * self.freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(embedding.to(t.dtype))
