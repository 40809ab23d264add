"""Small, deterministic, real media to try every program on: videos whose sound matches motion.

Each video is an h264 + AAC mp4 whose soundtrack is caused by what is seen (a ball that
clicks when it bounces, a square whose tone swells as it grows, a bar whose pitch follows its
position, a circle that bursts noise when it flashes), so a video-to-audio model has something
to learn. Long flac files (two clips each for PartitionClips) come with a captions table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import gin
import numpy as np

from mmgin import dist
from mmgin.data import tsv as tsv_io
from mmgin.programs.base import Program


@dataclass(frozen=True)
class _Canvas:
    width: int
    height: int

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.mgrid[0:self.height, 0:self.width]
        return xs.astype(np.float32), ys.astype(np.float32)


def _click_track(times: np.ndarray, onsets: list[float], freq: float) -> np.ndarray:
    """Short decaying blips at each onset time."""
    audio = np.zeros_like(times)
    for onset in onsets:
        after = times - onset
        mask = (after >= 0) & (after < 0.15)
        audio[mask] += np.exp(-after[mask] * 40.0) * np.sin(2 * np.pi * freq * after[mask])
    return audio


def _bouncing_ball(canvas: _Canvas, rng: np.random.Generator, fps: int, frames: int, rate: int, seconds: float):
    period = float(rng.uniform(0.7, 1.2))
    color = rng.integers(80, 255, size=3)
    xs, ys = canvas.grid()
    t = np.arange(frames) / fps
    height = np.abs(np.sin(np.pi * t / period))  # 0 at each floor contact
    video = np.zeros((frames, canvas.height, canvas.width, 3), np.uint8)
    radius = canvas.height / 10
    for i in range(frames):
        cx = canvas.width * (0.2 + 0.6 * (t[i] / seconds))
        cy = canvas.height - radius - height[i] * canvas.height * 0.7
        video[i][(xs - cx) ** 2 + (ys - cy) ** 2 < radius**2] = color
    times = np.arange(int(seconds * rate)) / rate
    audio = _click_track(times, list(np.arange(0, seconds, period)), float(rng.uniform(1500, 3000)))
    return video, audio, "a ball bouncing with a click at every bounce"


def _pulsing_square(canvas: _Canvas, rng: np.random.Generator, fps: int, frames: int, rate: int, seconds: float):
    pulse = float(rng.uniform(0.8, 2.0))
    tone = float(rng.uniform(220, 660))
    color = rng.integers(80, 255, size=3)
    t = np.arange(frames) / fps
    video = np.zeros((frames, canvas.height, canvas.width, 3), np.uint8)
    for i in range(frames):
        half = int((0.15 + 0.25 * (0.5 + 0.5 * math.sin(2 * math.pi * pulse * t[i]))) * canvas.height / 2)
        cy, cx = canvas.height // 2, canvas.width // 2
        video[i, cy - half:cy + half, cx - half:cx + half] = color
    times = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * pulse * times)
    return video, envelope * np.sin(2 * np.pi * tone * times), "a square pulsing with a humming tone"


def _sliding_bar(canvas: _Canvas, rng: np.random.Generator, fps: int, frames: int, rate: int, seconds: float):
    sweep = float(rng.uniform(0.2, 0.5))
    color = rng.integers(80, 255, size=3)
    t = np.arange(frames) / fps
    video = np.zeros((frames, canvas.height, canvas.width, 3), np.uint8)
    width = max(canvas.width // 12, 2)
    for i in range(frames):
        x = int((0.5 + 0.45 * math.sin(2 * math.pi * sweep * t[i])) * (canvas.width - width))
        video[i, :, x:x + width] = color
    times = np.arange(int(seconds * rate)) / rate
    position = 0.5 + 0.45 * np.sin(2 * np.pi * sweep * times)
    phase = 2 * np.pi * np.cumsum(300.0 + 900.0 * position) / rate
    return video, 0.6 * np.sin(phase), "a bar sliding sideways with a rising and falling whistle"


def _flashing_circle(canvas: _Canvas, rng: np.random.Generator, fps: int, frames: int, rate: int, seconds: float):
    onsets = sorted(float(x) for x in rng.uniform(0.2, seconds - 0.3, size=int(seconds * 1.5)))
    color = rng.integers(80, 255, size=3)
    xs, ys = canvas.grid()
    disc = (xs - canvas.width / 2) ** 2 + (ys - canvas.height / 2) ** 2 < (canvas.height / 4) ** 2
    t = np.arange(frames) / fps
    video = np.zeros((frames, canvas.height, canvas.width, 3), np.uint8)
    for i in range(frames):
        if any(0 <= t[i] - onset < 0.12 for onset in onsets):
            video[i][disc] = color
    times = np.arange(int(seconds * rate)) / rate
    noise = rng.standard_normal(times.shape).astype(np.float32)
    gate = np.zeros_like(times)
    for onset in onsets:
        after = times - onset
        mask = (after >= 0) & (after < 0.12)
        gate[mask] = np.exp(-after[mask] * 25.0)
    return video, 0.5 * gate * noise, "a circle flashing with a burst of noise"


_SCENES = (_bouncing_ball, _pulsing_square, _sliding_bar, _flashing_circle)


def write_mp4(path: Path, video: np.ndarray, audio: np.ndarray | None, fps: int, rate: int) -> None:
    """An mp4 with an h264 video track and (if given) a mono AAC track, the same bytes on every run.

    x264 runs single-threaded and without its assembly (``asm=0``): with PyAV 18.1's x264 on an
    AVX-512 processor, the first video encoded in a process came out different run to run. The
    C code is the same on every processor (it gave the AVX2 code's bytes) and costs 0.2 s per
    example video.
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"threads": "1", "x264-params": "asm=0"})
        stream.height, stream.width = video.shape[1:3]
        stream.pix_fmt = "yuv420p"
        audio_stream = container.add_stream("aac", rate=rate, layout="mono") if audio is not None else None
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if audio_stream is not None:
            container.mux(audio_stream.encode(_audio_frame(audio, rate)))
            container.mux(audio_stream.encode(None))


def write_audio(path: Path, audio: np.ndarray, rate: int, codec: str = "flac") -> None:
    """A mono audio file (flac by default) of float samples in [-1, 1]."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        container.mux(stream.encode(_audio_frame(audio, rate)))
        container.mux(stream.encode(None))


def _audio_frame(audio: np.ndarray, rate: int) -> av.AudioFrame:
    samples = np.clip(audio, -1.0, 1.0).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    return frame


_PITCHES = (("low", 220.0), ("high", 880.0), ("middle", 440.0))


def _long_audio(rng: np.random.Generator, index: int, rate: int, seconds: float) -> tuple[np.ndarray, str]:
    """Alternating tone and noise sections, so each clip of a long file sounds different."""
    times = np.arange(int(seconds * rate)) / rate
    pitch, tone = _PITCHES[index % len(_PITCHES)]
    section = (times // 2.0).astype(int) % 2
    tones = 0.5 * np.sin(2 * np.pi * tone * times * (1 + 0.05 * np.sin(2 * np.pi * 0.3 * times)))
    noise = 0.3 * rng.standard_normal(times.shape)
    return np.where(section == 0, tones, noise), f"a {pitch} tone alternating with bursts of noise"


@gin.configurable
class MakeExampleData(Program):
    """Writes ``videos/``, ``audios/``, ``video.tsv`` (id, label) and ``captions.tsv`` (id, caption).

    Deterministic for a given seed. Defaults keep it to a few seconds on a CPU: 160x120 at
    25 fps, 8.6 s videos with 44.1 kHz AAC (enough for the 8 s 16k and 44.1k pipelines), and
    17.5 s flacs at 44.1 kHz (two 8.1 s clips each in PartitionClips).
    """

    def __init__(
        self,
        output_dir: str | Path = gin.REQUIRED,
        num_videos: int = 4,
        num_audios: int = 2,
        video_seconds: float = 8.6,
        audio_seconds: float = 17.5,
        width: int = 160,
        height: int = 120,
        fps: int = 25,
        sample_rate: int = 44100,
        seed: int = 0,
    ):
        super().__init__(output_dir)
        self.num_videos, self.num_audios = num_videos, num_audios
        self.video_seconds, self.audio_seconds = video_seconds, audio_seconds
        self.canvas = _Canvas(width, height)
        self.fps, self.sample_rate, self.seed = fps, sample_rate, seed

    def run(self) -> None:
        if not dist.is_main():
            return
        videos = self.output_dir / "videos"
        audios = self.output_dir / "audios"
        videos.mkdir(parents=True, exist_ok=True)
        audios.mkdir(parents=True, exist_ok=True)
        labels = []
        frames = int(round(self.video_seconds * self.fps))
        for i in range(self.num_videos):
            rng = np.random.default_rng([self.seed, 0, i])
            scene = _SCENES[i % len(_SCENES)]
            video, audio, label = scene(self.canvas, rng, self.fps, frames, self.sample_rate, self.video_seconds)
            name = f"video_{i:03d}"
            write_mp4(videos / f"{name}.mp4", video, audio, self.fps, self.sample_rate)
            labels.append({"id": name, "label": label})
        captions = []
        for i in range(self.num_audios):
            rng = np.random.default_rng([self.seed, 1, i])
            audio, caption = _long_audio(rng, i, self.sample_rate, self.audio_seconds)
            name = f"audio_{i:03d}"
            write_audio(audios / f"{name}.flac", audio, self.sample_rate)
            captions.append({"id": name, "caption": caption})
        tsv_io.write_table(self.output_dir / "video.tsv", ("id", "label"), labels)
        tsv_io.write_table(self.output_dir / "captions.tsv", ("id", "caption"), captions)
        dist.log_main("example data: %d videos, %d audios in %s", len(labels), len(captions), self.output_dir)
