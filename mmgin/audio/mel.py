"""Log-mel spectrogram of the reference (Make-An-Audio 2 style) at 16 kHz and 44.1 kHz.

The VAE was trained on exactly these features, so every step (padding, window, magnitude floor,
Slaney mel basis, log base) follows the reference to the last bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MelConfig:
    """STFT and mel settings of one audio mode."""

    sampling_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float
    fmax: float
    log_base: str  # 'log10' or 'ln'


MEL_CONFIGS: dict[str, MelConfig] = {
    "16k": MelConfig(16000, 1024, 256, 1024, 80, 0.0, 8000.0, "log10"),
    "44k": MelConfig(44100, 2048, 512, 2048, 128, 0.0, 22050.0, "ln"),
}


# Slaney mel scale: linear below 1 kHz, logarithmic above (as librosa, htk=False).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=np.float64)
    log_mels = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-30) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_mels, hz / _F_SP)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), _F_SP * mels)


def slaney_mel_basis(sampling_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular Slaney-normalised mel filterbank, shape (num_mels, n_fft // 2 + 1), float32.

    Matches librosa.filters.mel defaults: ramps in float64, rows stored as float32, then the
    float32 rows are scaled by the float64 Slaney area norm and stored as float32 again.
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sampling_rate)
    mel_edges = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), num_mels + 2)
    mel_freqs = _mel_to_hz(mel_edges)
    fdiff = np.diff(mel_freqs)
    ramps = np.subtract.outer(mel_freqs, fft_freqs)
    weights = np.zeros((num_mels, n_fft // 2 + 1), dtype=np.float32)
    for i in range(num_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_freqs[2 : num_mels + 2] - mel_freqs[:num_mels])
    weights *= enorm[:, np.newaxis]
    return weights


class MelConverter(nn.Module):
    """waveform (B, T) in [-1, 1] -> log-mel (B, num_mels, T // hop)."""

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        basis = slaney_mel_basis(config.sampling_rate, config.n_fft, config.num_mels, config.fmin, config.fmax)
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("hann_window", torch.hann_window(config.win_size), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # Precision matters here (log of small magnitudes), so this always runs in float32.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            c = self.config
            x = waveform.float().clamp(min=-1.0, max=1.0)
            pad = (c.n_fft - c.hop_size) // 2
            x = F.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
            spec = torch.stft(
                x,
                c.n_fft,
                hop_length=c.hop_size,
                win_length=c.win_size,
                window=self.hann_window,
                center=False,
                normalized=False,
                onesided=True,
                return_complex=True,
            )
            spec = torch.view_as_real(spec)
            magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
            mel = torch.matmul(self.mel_basis, magnitude)
            mel = torch.clamp(mel, min=1e-5)
            return torch.log10(mel) if c.log_base == "log10" else torch.log(mel)


def get_mel_converter(mode: str) -> MelConverter:
    """The mel converter of '16k' or '44k' (eval mode)."""
    if mode not in MEL_CONFIGS:
        raise ValueError(f"Unknown audio mode {mode!r}; expected one of {sorted(MEL_CONFIGS)}")
    return MelConverter(MEL_CONFIGS[mode]).eval()
