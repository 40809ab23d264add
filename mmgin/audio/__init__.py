"""Audio components of MMAudio: mel converters, mel VAEs and BigVGAN vocoders (16 kHz, 44.1 kHz)."""

from mmgin.audio.codec import AudioCodec
from mmgin.audio.loading import get_vae, get_vocoder
from mmgin.audio.mel import get_mel_converter

__all__ = ["AudioCodec", "get_mel_converter", "get_vae", "get_vocoder"]
