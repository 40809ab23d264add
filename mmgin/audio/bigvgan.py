"""BigVGAN generators: the 16 kHz vocoder of Make-An-Audio 2 (v1) and NVIDIA's BigVGAN-v2 44.1 kHz.

Both share one architecture (AMP resblock "1" with anti-aliased Snake-beta); they differ in
the config: upsampling, final tanh vs clamp, and the bias of the last conv. Released files
store weight-normed convs under legacy ``weight_g``/``weight_v`` names; ``fuse_weight_norm``
folds them into plain weights at load time (the reference removes weight norm after loading).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from mmgin.audio.alias_free import Activation1d


@dataclass(frozen=True)
class BigVGANConfig:
    """Generator hyper-parameters (the subset of the BigVGAN config that shapes the generator)."""

    num_mels: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    sampling_rate: int = field(default=0, compare=False)

    @property
    def hop_size(self) -> int:
        return math.prod(self.upsample_rates)


# best_netG.pt (bigvgan_vocoder.yml of Make-An-Audio 2): 256x, final tanh.
BIGVGAN_16K = BigVGANConfig(80, (4, 4, 2, 2, 2, 2), (8, 8, 4, 4, 4, 4), 1536, sampling_rate=16000)
# nvidia/bigvgan_v2_44khz_128band_512x config.json: 512x, clamp instead of tanh, no final bias.
BIGVGAN_V2_44K = BigVGANConfig(
    128,
    (8, 4, 2, 2, 2, 2),
    (16, 8, 4, 4, 4, 4),
    1536,
    use_tanh_at_final=False,
    use_bias_at_final=False,
    sampling_rate=44100,
)


def config_from_json(path: str | os.PathLike) -> BigVGANConfig:
    """Reads a BigVGAN(-v2) config.json; only resblock '1' with log-scale snakebeta is supported."""
    with open(path) as f:
        raw = json.load(f)
    unsupported = {
        "resblock": (raw.get("resblock"), "1"),
        "activation": (raw.get("activation"), "snakebeta"),
        "snake_logscale": (raw.get("snake_logscale"), True),
    }
    for key, (value, wanted) in unsupported.items():
        if value != wanted:
            raise ValueError(f"{path}: BigVGAN config has {key}={value!r}; only {key}={wanted!r} is supported")
    names = {f.name for f in fields(BigVGANConfig)}
    kwargs = {k: v for k, v in raw.items() if k in names}
    for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
        kwargs[key] = tuple(kwargs[key])
    kwargs["resblock_dilation_sizes"] = tuple(tuple(d) for d in kwargs["resblock_dilation_sizes"])
    return BigVGANConfig(**kwargs)


def _padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """Anti-aliased multi-periodicity block: per dilation, act→dilated conv→act→conv, residual."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=_padding(kernel_size, 1))
            for _ in dilations
        )
        self.activations = nn.ModuleList(Activation1d(channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts1, acts2 = self.activations[::2], self.activations[1::2]
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, acts1, acts2):
            x = c2(a2(c1(a1(x)))) + x
        return x


class BigVGAN(nn.Module):
    """log-mel (B, num_mels, N) -> waveform (B, 1, N·hop) in [-1, 1]."""

    def __init__(self, config: BigVGANConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.num_kernels = len(c.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(c.num_mels, c.upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
            in_ch = c.upsample_initial_channel // (2**i)
            out_ch = c.upsample_initial_channel // (2 ** (i + 1))
            upsample = nn.ConvTranspose1d(in_ch, out_ch, kernel, rate, padding=(kernel - rate) // 2)
            self.ups.append(nn.ModuleList([upsample]))
        self.resblocks = nn.ModuleList()
        ch = c.upsample_initial_channel
        for i in range(len(self.ups)):
            ch = c.upsample_initial_channel // (2 ** (i + 1))
            for kernel, dilations in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock1(ch, kernel, dilations))
        self.activation_post = Activation1d(ch)
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=c.use_bias_at_final)

    @property
    def hop_size(self) -> int:
        return self.config.hop_size

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            for layer in up:
                x = layer(x)
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs += self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        if self.config.use_tanh_at_final:
            return torch.tanh(x)
        return torch.clamp(x, min=-1.0, max=1.0)


_LEGACY = {".weight_g": "g", ".weight_v": "v"}
_PARAMETRIZED = {".parametrizations.weight.original0": "g", ".parametrizations.weight.original1": "v"}


def fuse_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Folds weight-norm pairs (legacy weight_g/weight_v or parametrizations.weight.original0/1)
    into plain ``weight`` tensors, w = g · v / ||v|| (norm over all dims but 0), in file order."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for suffix, part in {**_LEGACY, **_PARAMETRIZED}.items():
            if key.endswith(suffix) or key == suffix[1:]:
                prefix = key[: -len(suffix)] if key.endswith(suffix) else ""
                pairs.setdefault(prefix, {})[part] = value
                if len(pairs[prefix]) == 2:
                    name = f"{prefix}.weight" if prefix else "weight"
                    out[name] = torch._weight_norm(pairs[prefix]["v"], pairs[prefix]["g"], 0)
                break
        else:
            out[key] = value
    incomplete = [p for p, parts in pairs.items() if len(parts) != 2]
    if incomplete:
        raise KeyError(f"weight-norm pairs missing a magnitude or direction tensor: {incomplete[:5]}")
    return out


def released_state_dict(model: BigVGAN) -> dict[str, torch.Tensor]:
    """The model's state dict in the released file layout (legacy weight_g/weight_v, g = ||w||).

    Used to write checkpoints that load like the released ones (for example tiny test vocoders).
    """
    # The released files store every conv weight-normed.
    normed = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))}
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, last = key.rpartition(".")
        if prefix not in normed or last == "bias":
            out[key] = value
        if prefix in normed and (last == "bias" or f"{prefix}.bias" not in state):
            # Legacy weight_norm re-registers the weight as (g, v) after the conv's bias.
            weight = state[f"{prefix}.weight"]
            dims = list(range(1, weight.ndim))
            out[prefix + ".weight_g"] = torch.linalg.vector_norm(weight, dim=dims, keepdim=True)
            out[prefix + ".weight_v"] = weight.clone()
    return out
