"""Video frame decoding: fps resampling, sizes, transforms and bad-input errors (real mp4s)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mmgin.media import errors
from torchvision.transforms import v2

from mmgin.media.video import (
    clip_frames_to_float,
    clip_transform,
    load_video_frames,
    resize_clip_frames,
    resize_sync_frames,
    sync_frames_to_float,
    sync_transform,
)

# Each source frame i is a flat grey of level (i * 3) % 252 (+ a tiny ramp): lossless H.264
# keeps it, so a decoded output frame tells which source frame it is.
LEVEL_STEP = 3
LEVEL_PERIOD = 84


def _frame_image(index: int, width: int, height: int) -> np.ndarray:
    level = (index % LEVEL_PERIOD) * LEVEL_STEP
    return np.full((height, width, 3), level, np.uint8)


def write_video(
    path: Path,
    times: list[float],
    width: int = 64,
    height: int = 48,
    rate: Fraction | int = 30,
    audio_seconds: float = 0.0,
) -> Path:
    """An mp4 (lossless h264, yuv444p) with one frame at each timestamp in ``times`` (s)."""
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = {"preset": "ultrafast", "qp": "0"}
        if audio_seconds:
            audio = container.add_stream("aac", rate=16000)
        for index, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_frame_image(index, width, height), format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_seconds:
            write_tone(container, audio, audio_seconds)
    return path


def write_tone(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    """Encodes ``seconds`` of a mono 440 Hz tone at the audio ``stream``'s rate, and flushes it
    (the soundtrack of the test videos; also used by test_vision_on_video)."""
    t = np.arange(int(seconds * stream.rate)) / stream.rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
    for start in range(0, wave.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(wave[:, start : start + 1024], format="fltp", layout="mono")
        frame.sample_rate = stream.rate
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def expected_sources(times: list[float], fps: int, count: int) -> list[int]:
    """ffmpeg fps (round=near): slot k shows the last frame i with round(t_i*fps) <= k.

    Computed exactly on the written timestamps (ticks of 1/90000 s); halves round up.
    """
    slots = [math.floor(Fraction(round(t * 90000), 90000) * fps + Fraction(1, 2)) for t in times]
    first = slots[0]
    return [max(i for i, s in enumerate(slots) if s <= first + k) for k in range(count)]


def source_index(frames: torch.Tensor, scale: float, offset: float) -> list[int]:
    """The source frame index (mod LEVEL_PERIOD) encoded in each output frame's grey level."""
    levels = (frames.mean(dim=(1, 2, 3)) * scale + offset) / LEVEL_STEP
    return [int(round(v)) for v in levels.tolist()]


def regular(fps: float, seconds: float, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(int(round(seconds * fps)))]


@pytest.mark.parametrize(
    "source_fps,rate",
    [(24, 24), (25, 25), (30000 / 1001, Fraction(30000, 1001)), (30, 30), (60, 60)],
)
def test_frames_follow_ffmpeg_fps_rule(tmp_path, source_fps, rate):
    times = regular(source_fps, 8.6)
    path = write_video(tmp_path / "v.mp4", times, rate=rate)
    clip, sync = load_video_frames(path)
    assert clip.shape == (64, 3, 384, 384) and sync.shape == (200, 3, 224, 224)
    assert clip.dtype == sync.dtype == torch.float32
    want_clip = [i % LEVEL_PERIOD for i in expected_sources(times, 8, 64)]
    want_sync = [i % LEVEL_PERIOD for i in expected_sources(times, 25, 200)]
    assert source_index(clip, 255.0, 0.0) == want_clip
    assert source_index(sync, 127.5, 127.5) == want_sync


def test_variable_frame_rate(tmp_path):
    rng = np.random.default_rng(0)
    gaps = rng.choice([1 / 60, 1 / 30, 1 / 12, 0.1], size=200)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    times = [float(t) for t in times if t < 8.8]
    path = write_video(tmp_path / "vfr.mp4", times, rate=30)
    clip, sync = load_video_frames(path)
    assert source_index(clip, 255.0, 0.0) == [
        i % LEVEL_PERIOD for i in expected_sources(times, 8, 64)
    ]
    assert source_index(sync, 127.5, 127.5) == [
        i % LEVEL_PERIOD for i in expected_sources(times, 25, 200)
    ]


def test_exactly_eight_seconds_is_enough_and_less_is_too_short(tmp_path):
    load_video_frames(write_video(tmp_path / "8s.mp4", regular(25, 8.0), rate=25))
    short = write_video(tmp_path / "7s.mp4", regular(25, 7.5), rate=25)
    with pytest.raises(errors.TooShort) as info:
        load_video_frames(short)
    assert info.value.reason == "too_short" and info.value.path == str(short)


@pytest.mark.parametrize(
    "width,height,fps,audio", [(320, 240, 30, 9.0), (97, 61, 25, 0.0), (120, 160, 25, 0.0)]
)
def test_real_clip_with_audio_odd_and_portrait_sizes(tmp_path, width, height, fps, audio):
    """h264(+aac) 320x240, an odd size and a portrait video: shapes and value ranges."""
    path = tmp_path / f"{width}x{height}.mp4"
    write_video(path, regular(fps, 8.5), width, height, rate=fps, audio_seconds=audio)
    clip, sync = load_video_frames(path)
    assert clip.shape == (64, 3, 384, 384) and sync.shape == (200, 3, 224, 224)
    assert 0.0 <= clip.min() and clip.max() <= 1.0
    assert -1.0 <= sync.min() and sync.max() <= 1.0


def test_transforms_resize_directly_and_center_crop():
    """CLIP squashes the whole frame; sync keeps the aspect and crops the long side's centre."""
    frames = torch.zeros(1, 3, 100, 300, dtype=torch.uint8)
    frames[..., :, :100] = 255  # left third white
    clip = clip_transform(frames)
    assert clip.shape == (1, 3, 384, 384)
    assert clip[0, :, :, :100].mean() > 0.99 and clip[0, :, :, 160:].max() < 0.01
    sync = sync_transform(frames)
    assert sync.shape == (1, 3, 224, 224)
    # 100x300 -> 224x672, crop columns 224..448: the black middle third (white bleeds 1 px).
    assert sync[..., 2:].max() == -1.0
    frames[..., 100:200] = 128
    middle = sync_transform(frames)[..., 4:-4]  # away from the ringing at the third boundaries
    assert torch.allclose(middle, torch.full_like(middle, 128 / 255 * 2 - 1), atol=1e-6)


def test_uint8_resize_then_scaling_is_the_reference_compose_bit_for_bit():
    """Workers resize in uint8 and the device scales: together exactly the reference's one
    torchvision v2 Compose per stream (Resize, [CenterCrop,] ToDtype, [Normalize])."""
    frames = torch.randint(0, 256, (3, 3, 90, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bicubic = v2.InterpolationMode.BICUBIC
    reference_clip = v2.Compose(
        [v2.Resize((384, 384), interpolation=bicubic, antialias=True), v2.ToDtype(torch.float32, scale=True)]
    )
    reference_sync = v2.Compose([
        v2.Resize(224, interpolation=bicubic, antialias=True), v2.CenterCrop(224),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3),
    ])
    clip = resize_clip_frames(frames)
    sync = resize_sync_frames(frames)
    assert clip.dtype == sync.dtype == torch.uint8
    assert torch.equal(clip_frames_to_float(clip), reference_clip(frames))
    assert torch.equal(sync_frames_to_float(sync), reference_sync(frames))


def test_tiny_frames_are_rejected(tmp_path):
    path = write_video(tmp_path / "tiny.mp4", regular(25, 9.0), width=8, height=8, rate=25)
    with pytest.raises(errors.BadFrameSize) as info:
        load_video_frames(path)
    assert info.value.reason == "bad_frame_size" and "8x8" in str(info.value)


def test_one_pixel_frames_are_rejected(tmp_path):
    path = tmp_path / "one.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1, 1, "yuv444p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.zeros((1, 1, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame.reformat(format="yuv444p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(errors.BadFrameSize):
        load_video_frames(path)


def test_absurd_frame_rate_is_rejected(tmp_path):
    path = write_video(tmp_path / "slow.mp4", [i * 2.0 for i in range(6)], rate=Fraction(1, 2))
    with pytest.raises(errors.BadFrameRate) as info:
        load_video_frames(path)
    assert info.value.reason == "bad_frame_rate"


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        write_tone(container, container.add_stream("aac", rate=16000), 2.0)
    with pytest.raises(errors.NoVideoStream) as info:
        load_video_frames(path)
    assert info.value.reason == "no_video_stream"


@pytest.mark.parametrize("content", [b"", b"this is a caption file, not a video\n"])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(errors.UnreadableMedia) as info:
        load_video_frames(path)
    assert info.value.reason == "unreadable" and info.value.path == str(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(errors.UnreadableMedia):
        load_video_frames(tmp_path / "missing.mp4")
    good = write_video(tmp_path / "good.mp4", regular(25, 9.0), width=160, height=120, rate=25)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(errors.UnreadableMedia):  # the mp4 index (moov) is at the end
        load_video_frames(truncated)
