"""Audio decoding with PyAV: any container/codec FFmpeg reads, to mono float32 at a target rate.

The preparation follows the reference extraction exactly: channel mean, peak normalisation over
the whole file (``/ abs_max * 0.95``), optional sample range at the native rate, Kaiser-best
resampling (``mmgin.media.resample``: torchaudio's result, without torchaudio), then length
checks. Bad files raise ``mmgin.media.errors.MediaError`` subclasses whose ``reason``
extraction programs record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import av
import numpy as np
import torch

from mmgin.media.errors import NoAudioStream, SilentAudio, TooShort, UnreadableMedia
from mmgin.media.resample import resample

SILENCE_THRESHOLD = 1e-6
PEAK_LEVEL = 0.95

# Integer sample formats are scaled to [-1, 1) the way FFmpeg's converter does (x / 2^(bits-1)).
_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


@dataclass(frozen=True)
class DecodedAudio:
    """All channels of an audio stream at its native rate: ``samples`` is (channels, frames) float32."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return self.samples.shape[-1]

    def mono(self) -> torch.Tensor:
        """Channel mean (float32), as the reference down-mixes."""
        return self.samples.mean(dim=0)


def _frame_to_array(frame: av.AudioFrame) -> np.ndarray:
    """(channels, samples) float32 for any planar/packed integer/float sample format."""
    data = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    name = frame.format.name.rstrip("p")
    if name in _INT_SCALE:
        scale = np.float32(_INT_SCALE[name])
        if name == "u8":
            return (data.astype(np.float32) - scale) / scale
        return data.astype(np.float32) / scale
    return data.astype(np.float32, copy=False)


def decode_audio(path: str | os.PathLike) -> DecodedAudio:
    """Decodes the first audio stream of ``path`` completely, at its native rate."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnreadableMedia("File not found; check the path and the file list", path)
    if os.path.getsize(path) == 0:
        raise UnreadableMedia("File is empty (0 bytes); re-export or remove it", path)
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise UnreadableMedia(
            f"Cannot open as media ({error}); the file is corrupt or not audio/video", path
        ) from error
    with container:
        if not container.streams.audio:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise NoAudioStream(f"No audio stream (streams: {kinds}); this file cannot give audio features", path)
        stream = container.streams.best("audio") or container.streams.audio[0]  # as FFmpeg picks it
        chunks: list[np.ndarray] = []
        rate = 0  # from the decoded frames: the stream header can differ (e.g. HE-AAC reports its core rate)
        decoded = 0
        try:
            for frame in container.decode(stream):
                if not chunks:
                    rate = frame.sample_rate
                elif frame.sample_rate != rate or frame.layout.nb_channels != chunks[0].shape[0]:
                    raise UnreadableMedia(
                        f"Sample rate or channel layout changes mid-stream (at {decoded} samples); re-encode the file",
                        path,
                    )
                chunks.append(_frame_to_array(frame))
                decoded += frame.samples
        except av.FFmpegError as error:
            raise UnreadableMedia(
                f"Decoding failed after {decoded} samples ({error}); the file is truncated or corrupt", path
            ) from error
    if decoded == 0:
        raise TooShort("Audio stream holds no samples", path)
    if rate <= 0:
        raise UnreadableMedia("Audio stream has no valid sample rate", path)
    samples = torch.from_numpy(np.ascontiguousarray(np.concatenate(chunks, axis=1)))
    return DecodedAudio(samples, int(rate))


def _seconds(samples: int, rate: int) -> str:
    return f"{samples / rate:.3f} s ({samples} samples at {rate} Hz)"


def prepare_waveform(
    mono: torch.Tensor,
    native_rate: int,
    sample_rate: int,
    *,
    normalize: bool = True,
    reject_silent: bool = True,
    start_sample: int = 0,
    end_sample: int | None = None,
    min_samples: int | None = None,
    max_samples: int | None = None,
    path: str | os.PathLike | None = None,
) -> torch.Tensor:
    """The reference preparation of a mono native-rate waveform (see ``load_audio``)."""
    abs_max = float(mono.abs().max()) if mono.numel() else 0.0
    if (reject_silent or normalize) and abs_max <= SILENCE_THRESHOLD:
        raise SilentAudio(
            f"Audio is silent (peak {abs_max:.3g} <= {SILENCE_THRESHOLD:g}), so it cannot be normalised; "
            "remove it from the file list",
            path,
        )
    if normalize:
        mono = mono / abs_max * PEAK_LEVEL
    total = mono.shape[-1]
    if start_sample or end_sample is not None:
        end = total if end_sample is None else end_sample
        if not 0 <= start_sample < end:
            raise ValueError(f"invalid sample range [{start_sample}, {end_sample}) for {path}")
        if end > total:
            raise TooShort(
                f"Requested samples [{start_sample}, {end}) but the audio has {_seconds(total, native_rate)}; "
                "regenerate the clip table for this file",
                path,
            )
        mono = mono[start_sample:end]
    waveform = resample(mono, native_rate, sample_rate)
    if min_samples is not None and waveform.shape[-1] < min_samples:
        raise TooShort(
            f"Audio is {_seconds(waveform.shape[-1], sample_rate)} after resampling, but "
            f"{_seconds(min_samples, sample_rate)} are needed; drop the file or use a shorter duration",
            path,
        )
    if max_samples is not None:
        waveform = waveform[:max_samples]
    return waveform.contiguous()


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    normalize: bool = True,
    reject_silent: bool = True,
    min_samples: int | None = None,
    max_samples: int | None = None,
    start_sample: int = 0,
    end_sample: int | None = None,
) -> torch.Tensor:
    """Mono float32 waveform [T] of ``path`` at ``sample_rate``.

    In order: decode all channels at the native rate and average them; take the peak over the
    whole file, reject it if silent (peak <= 1e-6; always when normalising) and, if
    ``normalize``, scale to a 0.95 peak; cut ``[start_sample, end_sample)`` (native rate);
    resample; require ``min_samples``; truncate to ``max_samples``.
    """
    decoded = decode_audio(path)
    return prepare_waveform(decoded.mono(), decoded.sample_rate, sample_rate, normalize=normalize,
                            reject_silent=reject_silent, start_sample=start_sample, end_sample=end_sample,
                            min_samples=min_samples, max_samples=max_samples, path=path)
