"""Sequence lengths and feature widths of every stream, derived from the clip duration and the
audio mode.

The network's RoPE tables, sync upsampling and input checks depend on these lengths, and the
data pipeline needs the matching sample count and widths, so both read them from one place.
"""

from __future__ import annotations

import dataclasses
import math

# Fixed by the encoders and the VAE: CLIP runs at 8 fps, Synchformer at 25 fps on 16-frame
# segments with step 8 (8 output tokens per segment), and the VAE halves the mel frame rate.
CLIP_FPS = 8
SYNC_FPS = 25
SYNC_SEGMENT_FRAMES = 16
SYNC_SEGMENT_STEP = 8
SYNC_DOWNSAMPLE = 2
LATENT_DOWNSAMPLE = 2
TEXT_SEQ_LEN = 77
# Feature widths of the released encoders: CLIP ViT-H-14 (image and text towers) and Synchformer.
CLIP_DIM = 1024
SYNC_DIM = 768
TEXT_DIM = 1024
TEXT_SHAPE = (TEXT_SEQ_LEN, TEXT_DIM)

_MODES = {
    # mode: (sampling rate, STFT hop, VAE latent channels)
    "16k": (16000, 256, 20),
    "44k": (44100, 512, 40),
}


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """Lengths for one (mode, duration); build it with `SequenceConfig.for_mode`."""

    mode: str
    duration: float
    sampling_rate: int
    hop_size: int
    latent_dim: int

    @classmethod
    def for_mode(cls, mode: str, duration: float = 8.0) -> "SequenceConfig":
        if mode not in _MODES:
            raise ValueError(f"unknown audio mode {mode!r}; expected one of {sorted(_MODES)}")
        if duration * SYNC_FPS < SYNC_SEGMENT_FRAMES:
            raise ValueError(
                f"duration {duration} s is shorter than one Synchformer segment "
                f"({SYNC_SEGMENT_FRAMES / SYNC_FPS} s)"
            )
        sampling_rate, hop_size, latent_dim = _MODES[mode]
        return cls(mode, float(duration), sampling_rate, hop_size, latent_dim)

    @property
    def latent_seq_len(self) -> int:
        frames = self.duration * self.sampling_rate / self.hop_size
        return int(math.ceil(frames / LATENT_DOWNSAMPLE))

    @property
    def num_audio_samples(self) -> int:
        """A whole number of latents: 8 s at 44.1 kHz becomes 353280 samples (8.011 s)."""
        return self.latent_seq_len * self.hop_size * LATENT_DOWNSAMPLE

    @property
    def clip_seq_len(self) -> int:
        return int(self.duration * CLIP_FPS)

    @property
    def sync_seq_len(self) -> int:
        num_frames = self.duration * SYNC_FPS
        num_segments = (num_frames - SYNC_SEGMENT_FRAMES) // SYNC_SEGMENT_STEP + 1
        return int(num_segments * SYNC_SEGMENT_FRAMES / SYNC_DOWNSAMPLE)

    @property
    def text_seq_len(self) -> int:
        return TEXT_SEQ_LEN
