"""Writing waveforms to FLAC or WAV with PyAV, atomically (a crash never leaves a partial file)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch

from mmgin import io

# suffix -> (container format, {bits: (codec, sample format)})
_FORMATS = {
    ".flac": ("flac", {16: ("flac", "s16")}),
    ".wav": ("wav", {16: ("pcm_s16le", "s16"), 32: ("pcm_f32le", "flt")}),
}


def _as_channels_first(waveform: torch.Tensor | np.ndarray) -> np.ndarray:
    data = waveform.detach().float().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[0] > 8:
        raise ValueError(f"expected a waveform [T] or [channels, T], got shape {tuple(data.shape)}")
    return np.clip(data.astype(np.float32), -1.0, 1.0)


def write_audio(
    path: str | os.PathLike,
    waveform: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    bits: int = 16,
) -> Path:
    """Writes ``waveform`` ([T] or [channels, T], float in [-1, 1], clipped) to ``path``.

    The suffix picks the format: .flac (16-bit) or .wav (16-bit PCM, or bits=32 for float).
    """
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"{path}: unsupported audio suffix; use one of {sorted(_FORMATS)}")
    container_format, codecs = _FORMATS[path.suffix.lower()]
    if bits not in codecs:
        raise ValueError(f"{path}: {path.suffix} supports bits in {sorted(codecs)}, not {bits}")
    codec, sample_format = codecs[bits]
    data = _as_channels_first(waveform)
    channels = data.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    if sample_format == "s16":
        packed = np.clip(np.round(data * 32768.0), -32768, 32767).astype(np.int16)
    else:
        packed = data
    packed = np.ascontiguousarray(packed.T).reshape(1, -1)  # packed (interleaved) samples
    with io.atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format=container_format) as out:
            stream = out.add_stream(codec, rate=int(sample_rate), layout=layout)
            frame = av.AudioFrame.from_ndarray(packed, format=sample_format, layout=layout)
            frame.sample_rate = int(sample_rate)
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
    return path
