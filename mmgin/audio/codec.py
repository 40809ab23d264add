"""AudioCodec: waveform <-> VAE latents for one audio mode (mel, VAE, vocoder together).

Extraction encodes waveforms to the posterior mean/std the feature stores hold; training and
evaluation decode generated latents back to waveforms. All parts are frozen and stay in eval
mode. The mel runs in float32 even under autocast; the VAE and vocoder follow autocast (bf16 on
GPU); without autocast everything is float32 and reproduces the reference fixtures.
"""

from __future__ import annotations

import os

import gin
import torch
from torch import nn

from mmgin.audio.loading import get_vae, get_vocoder
from mmgin.audio.mel import get_mel_converter


@gin.configurable
class AudioCodec(nn.Module):
    """Mel converter + VAE (+ vocoder) of ``mode`` ('16k' or '44k').

    Latents are (B, L, C) here, as the feature stores and the flow network use them; one latent
    frame covers ``samples_per_latent`` waveform samples (2 mel hops).
    """

    def __init__(
        self,
        mode: str = "16k",
        vae_checkpoint: str | os.PathLike | None = None,
        vocoder_checkpoint: str | os.PathLike | None = None,
        size: str = "full",
        with_encoder: bool = True,
        with_vocoder: bool = True,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.size = size
        self.mel_converter = get_mel_converter(mode)
        self.vae = get_vae(mode, vae_checkpoint, size=size, with_encoder=with_encoder)
        self.vocoder = get_vocoder(mode, vocoder_checkpoint, size=size) if with_vocoder else None
        mel_hop = self.mel_converter.config.hop_size
        if self.vocoder is not None and self.vocoder.hop_size != mel_hop:
            raise ValueError(
                f"vocoder hop {self.vocoder.hop_size} != mel hop {mel_hop} for mode {mode}"
            )
        self.eval()

    def train(self, mode: bool = True) -> AudioCodec:
        """Always eval: the codec is frozen (no dropout/batch statistics to update anyway)."""
        return super().train(False)

    @property
    def sampling_rate(self) -> int:
        return self.mel_converter.config.sampling_rate

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    @property
    def samples_per_latent(self) -> int:
        return 2 * self.mel_converter.config.hop_size

    @torch.no_grad()
    def mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) in [-1, 1] -> log-mel (B, n_mels, T // hop), float32."""
        return self.mel_converter(waveform)

    @torch.no_grad()
    def encode_waveform(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) -> posterior (mean, std), each (B, T // samples_per_latent, C) float32."""
        posterior = self.vae.encode(self.mel(waveform))
        return posterior.mean.float().transpose(1, 2), posterior.std.float().transpose(1, 2)

    @torch.no_grad()
    def decode_mel(self, latent: torch.Tensor) -> torch.Tensor:
        """Un-normalised latent (B, L, C) -> log-mel (B, n_mels, 2L), float32."""
        return self.vae.decode(latent.transpose(1, 2)).float()

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, N) -> waveform (B, N·hop), float32 in [-1, 1]."""
        if self.vocoder is None:
            raise RuntimeError("this AudioCodec was built with with_vocoder=False")
        return self.vocoder(mel).squeeze(1).float()

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Un-normalised latent (B, L, C) -> waveform (B, L·samples_per_latent)."""
        return self.vocode(self.decode_mel(latent))
