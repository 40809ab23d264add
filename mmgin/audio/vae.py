"""The MMAudio mel VAE (EDM2-style 1-D autoencoder), 16 kHz (latent 20) and 44.1 kHz (latent 40).

Module names and shapes equal the released v1-16.pth / v1-44.pth state dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmgin.audio import vae_constants
from mmgin.audio.mp_layers import MPConv1D, mp_normalize, mp_silu, mp_sum


class ResnetBlock1D(nn.Module):
    """Pixel norm, two mp_silu→conv layers, magnitude-preserving residual (t=0.3)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.conv1 = MPConv1D(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1D(out_dim, out_dim, kernel_size)
        if in_dim != out_dim:
            self.nin_shortcut = MPConv1D(in_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = mp_normalize(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.in_dim != self.out_dim:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, t=0.3)


class AttnBlock1D(nn.Module):
    """Single-head self-attention over time with cosine (pixel-normalised) q, k, v."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MPConv1D(channels, channels * 3, 1)
        self.proj_out = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.qkv(x)
        # Channels are laid out as (head, channel, q/k/v).
        y = y.reshape(y.shape[0], self.num_heads, -1, 3, y.shape[-1])
        q, k, v = mp_normalize(y, dim=2).unbind(3)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(x.shape[0], -1, x.shape[-1])
        return mp_sum(x, self.proj_out(h), t=0.3)


class Downsample1D(nn.Module):
    """1x1 conv, average-pool by 2, 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = MPConv1D(channels, channels, 1)
        self.conv2 = MPConv1D(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample1D(nn.Module):
    """Nearest-exact x2, then a k3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = MPConv1D(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


class _Level(nn.Module):
    """One resolution level: res blocks (``block``), and an optional resampler."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class _Mid(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock1D(channels, channels)
        self.attn_1 = AttnBlock1D(channels)
        self.block_2 = ResnetBlock1D(channels, channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


# Architecture shared by both released VAEs: ch_mult (1, 2, 4), 2 res blocks per level, one time
# downsample after level 0, attention only in the middle block, activations clamped to ±256.
CH_MULT = (1, 2, 4)
NUM_RES_BLOCKS = 2
DOWN_LEVELS = (0,)
CLIP_ACT = 256.0


class Encoder1D(nn.Module):
    """mel (B, n_mels, T) -> moments (B, 2·embed, T/2)."""

    def __init__(self, in_dim: int, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.conv_in = MPConv1D(in_dim, dim, 3)
        self.down = nn.ModuleList()
        block_in = dim
        for level, mult in enumerate(CH_MULT):
            blocks = []
            for _ in range(NUM_RES_BLOCKS):
                blocks.append(ResnetBlock1D(block_in, dim * mult))
                block_in = dim * mult
            stage = _Level(blocks)
            if level in DOWN_LEVELS:
                stage.downsample = Downsample1D(block_in)
            self.down.append(stage)
        self.mid = _Mid(block_in)
        self.conv_out = MPConv1D(block_in, 2 * embed_dim, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h).clamp(-CLIP_ACT, CLIP_ACT)
            if level in DOWN_LEVELS:
                h = stage.downsample(h)
        h = self.mid(h).clamp(-CLIP_ACT, CLIP_ACT)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder1D(nn.Module):
    """latent (B, embed, L) -> mel (B, n_mels, 2L). ``up`` is indexed by level (0 = finest)."""

    def __init__(self, out_dim: int, dim: int, embed_dim: int) -> None:
        super().__init__()
        upsample_levels = [level + 1 for level in DOWN_LEVELS]
        block_in = dim * CH_MULT[-1]
        self.conv_in = MPConv1D(embed_dim, block_in, 3)
        self.mid = _Mid(block_in)
        stages: list[nn.Module] = []
        for level in reversed(range(len(CH_MULT))):
            blocks = []
            for _ in range(NUM_RES_BLOCKS + 1):
                blocks.append(ResnetBlock1D(block_in, dim * CH_MULT[level]))
                block_in = dim * CH_MULT[level]
            stage = _Level(blocks)
            if level in upsample_levels:
                stage.upsample = Upsample1D(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.upsample_levels = tuple(upsample_levels)
        self.conv_out = MPConv1D(block_in, out_dim, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z)).clamp(-CLIP_ACT, CLIP_ACT)
        for level in reversed(range(len(CH_MULT))):
            stage = self.up[level]
            for block in stage.block:
                h = block(h).clamp(-CLIP_ACT, CLIP_ACT)
            if level in self.upsample_levels:
                h = stage.upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


@dataclass
class DiagonalGaussian:
    """Posterior of the VAE encoder; ``mean``/``std`` are (B, C, L)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return cls(mean, torch.clamp(logvar, -30.0, 20.0))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)


@dataclass(frozen=True)
class VAEConfig:
    """Widths of one VAE: mel bins in/out, latent channels, base hidden width."""

    n_mels: int
    embed_dim: int
    hidden_dim: int


VAE_CONFIGS: dict[tuple[str, str], VAEConfig] = {
    ("16k", "full"): VAEConfig(80, 20, 384),
    ("44k", "full"): VAEConfig(128, 40, 512),
    # Same code, mel and latent dims; tiny width for CPU tests and the example.
    ("16k", "tiny"): VAEConfig(80, 20, 8),
    ("44k", "tiny"): VAEConfig(128, 40, 8),
}


_MEL_STATS = {
    80: (vae_constants.MEL_MEAN_80, vae_constants.MEL_STD_80),
    128: (vae_constants.MEL_MEAN_128, vae_constants.MEL_STD_128),
}


class VAE(nn.Module):
    """Mel autoencoder with per-bin mel normalisation (``data_mean``/``data_std`` buffers)."""

    def __init__(self, config: VAEConfig, with_encoder: bool = True) -> None:
        super().__init__()
        self.config = config
        mean, std = _MEL_STATS[config.n_mels]
        self.register_buffer("data_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("data_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))
        self.encoder = Encoder1D(config.n_mels, config.hidden_dim, config.embed_dim) if with_encoder else None
        self.decoder = Decoder1D(config.n_mels, config.hidden_dim, config.embed_dim)

    @property
    def latent_dim(self) -> int:
        return self.config.embed_dim

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.data_mean) / self.data_std

    def unnormalize(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.data_std + self.data_mean

    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        """mel (B, n_mels, T) -> posterior with mean/std (B, C, T/2)."""
        if self.encoder is None:
            raise RuntimeError("this VAE was built without its encoder (with_encoder=False)")
        return DiagonalGaussian.from_moments(self.encoder(self.normalize(mel)))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, C, L) -> mel (B, n_mels, 2L), un-normalised."""
        return self.unnormalize(self.decoder(latent))

    def remove_weight_norm(self) -> VAE:
        """Applies the one-off forced weight normalisation to every MPConv1D (after loading)."""
        for module in self.modules():
            if isinstance(module, MPConv1D):
                module.remove_weight_norm()
        return self
