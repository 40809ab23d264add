"""Real media files for the reliability corpus, written with PyAV (no mocks, no fixtures on disk).

Every writer takes explicit codecs, rates and sizes so a scenario says exactly what kind of
file it is. Frames are cheap patterns (a moving square) and sound is a tone, so writing the
whole corpus takes a couple of seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np


@dataclass(frozen=True)
class Sound:
    """An audio track: codec, rate, channels; ``silent`` writes digital silence."""

    rate: int = 16000
    channels: int = 1
    codec: str = "aac"
    silent: bool = False


def tone(rate: int, seconds: float, channels: int = 1, silent: bool = False) -> np.ndarray:
    """(channels, frames) float32: a 440 Hz sine, channel c at 1/(c+1) of the level."""
    t = np.arange(int(round(rate * seconds))) / rate
    wave = 0.0 * t if silent else 0.5 * np.sin(2 * np.pi * 440.0 * t)
    return np.stack([wave / (c + 1) for c in range(channels)]).astype(np.float32)


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")


def _encode_audio(container: av.container.OutputContainer, stream, samples: np.ndarray, rate: int) -> None:
    layout = _layout(samples.shape[0])
    for start in range(0, samples.shape[1], 4096):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 4096]),
                                           format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _image(index: int, width: int, height: int) -> np.ndarray:
    image = np.full((height, width, 3), 30, np.uint8)
    side = max(1, min(width, height) // 4)
    x = (index * 3) % max(1, width - side)
    image[: side, x:x + side] = (200, 90 + index % 100, 40)
    return image


def write_video(
    path: Path,
    seconds: float = 8.6,
    size: tuple[int, int] = (64, 48),
    fps: int = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    sound: Sound | None = Sound(),
    times: Sequence[float] | None = None,
    container_format: str | None = None,
    audio_seconds: float | None = None,
) -> Path:
    """A video file of ``seconds`` at ``fps`` (or frames at ``times``, for a variable rate);
    the sound lasts as long as the frames unless ``audio_seconds`` says otherwise."""
    width, height = size
    times = [i / fps for i in range(int(round(seconds * fps)))] if times is None else list(times)
    # mpeg4 needs a time base denominator below 2^16; 1/6000 holds 2000 fps and the VFR gaps.
    time_base = Fraction(1, 90000) if codec == "libx264" else Fraction(1, 6000)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "threads": "1"}
        audio = None
        if sound is not None:
            audio = container.add_stream(sound.codec, rate=sound.rate, layout=_layout(sound.channels))
        for index, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_image(index, width, height), format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            length = audio_seconds if audio_seconds is not None else times[-1] + 1 / fps
            samples = tone(sound.rate, length, sound.channels, sound.silent)
            _encode_audio(container, audio, samples, sound.rate)
    return path


def write_audio_only(path: Path, seconds: float, sound: Sound, container_format: str | None = None) -> Path:
    """A file with one audio stream and nothing else."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(sound.codec, rate=sound.rate, layout=_layout(sound.channels))
        _encode_audio(container, stream, tone(sound.rate, seconds, sound.channels, sound.silent), sound.rate)
    return path


def truncate(source: Path, target: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target
