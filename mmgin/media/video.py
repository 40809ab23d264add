"""Video frames for the conditioning encoders: CLIP frames at 8 fps and sync frames at 25 fps.

One decode of the file feeds an ffmpeg filter graph (through PyAV) that splits into one
``fps=<rate>,format=pix_fmts=rgb24`` branch per stream, the same filters the reference's
torio reader inserts for ``frame_rate=8.0`` / ``25.0`` with ``format='rgb24'``.

Frame selection (ffmpeg's ``fps`` filter, default ``round=near``): each source frame with
timestamp t goes to output slot ``round(t * fps)`` (halves away from zero); output slots
start at the first frame's slot, and slot k shows the *last* source frame whose slot is
<= k. So a slower source repeats frames, a faster one drops them, and e.g. a 30 fps source
at 8 fps gives source frames 1, 5, 9, 13, 16, ... (frame i is kept for slot k when it is the
last one with i/30 * 8 < k + 0.5). Variable frame rates follow from the timestamps.

The transforms then match the reference extraction (torchvision v2 on uint8 frames):
CLIP: direct bicubic antialiased resize to 384x384 (aspect not kept), scaled to [0, 1].
Sync: bicubic antialiased resize of the short side to 224, center crop 224, [0, 1], then
Normalize(0.5, 0.5) to [-1, 1]. Rotation metadata is ignored, as in the reference.

The resize runs on uint8 frames and yields uint8 codes, so it is split from the scaling:
``decode_video_frames`` stops at the resized uint8 frames (what extraction workers hand to the
GPU: a quarter of the bytes, and no float passes on the CPU), ``*_frames_to_float`` finish on
any device, and the composition is bit for bit the reference transform.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from mmgin.media.errors import BadFrameRate, BadFrameSize, NoVideoStream, TooShort, UnreadableMedia

MIN_FRAME_RATE = 1.0
MAX_FRAME_RATE = 1000.0
MIN_FRAME_SIDE = 16
MAX_FRAME_SIDE = 8192
_RESIZE_CHUNK = 16  # frames resized together; bounds memory for large sources


class _FrameStream:
    """Collects one fps branch's frames, transforming them in chunks into a preallocated tensor."""

    def __init__(self, needed: int, size: int, transform) -> None:
        self.needed = needed
        self.transform = transform
        self.count = 0
        self._pending: list[np.ndarray] = []
        self._out = torch.empty(needed, 3, size, size, dtype=torch.uint8)
        self._written = 0

    @property
    def full(self) -> bool:
        return self.count >= self.needed

    def add(self, frame: av.VideoFrame) -> None:
        if self.full:
            return
        self._pending.append(frame.to_ndarray())
        self.count += 1
        if len(self._pending) >= _RESIZE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            batch = torch.from_numpy(np.stack(self._pending)).permute(0, 3, 1, 2)
            end = self._written + len(self._pending)
            self._out[self._written : end] = self.transform(batch)
            self._written = end
            self._pending = []

    def result(self) -> torch.Tensor:
        self._flush()
        return self._out


def resize_clip_frames(frames: torch.Tensor, size: int = 384) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, size, size); direct bicubic resize, no crop."""
    return TF.resize(frames, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def resize_sync_frames(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> uint8 (T, 3, size, size); bicubic short side, center crop."""
    frames = TF.resize(frames, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(frames, [size, size])


def clip_frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """Resized uint8 CLIP frames -> float32 in [0, 1] (torchvision's to_dtype, scale=True)."""
    return TF.to_dtype(frames, torch.float32, scale=True)


def sync_frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """Resized uint8 sync frames -> float32 in [-1, 1] (to_dtype, then Normalize(0.5, 0.5))."""
    return TF.normalize(TF.to_dtype(frames, torch.float32, scale=True), [0.5] * 3, [0.5] * 3)


def clip_transform(frames: torch.Tensor, size: int = 384) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32 (T, 3, size, size) in [0, 1]: the reference CLIP transform."""
    return clip_frames_to_float(resize_clip_frames(frames, size))


def sync_transform(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32 (T, 3, size, size) in [-1, 1]: the reference sync transform."""
    return sync_frames_to_float(resize_sync_frames(frames, size))


def _check_stream(stream: av.video.stream.VideoStream, path: str) -> None:
    rate = stream.average_rate or stream.guessed_rate
    if rate is None or not MIN_FRAME_RATE <= float(rate) <= MAX_FRAME_RATE:
        raise BadFrameRate(
            f"video frame rate {rate} is outside [{MIN_FRAME_RATE}, {MAX_FRAME_RATE}] fps; "
            "re-encode the video at a normal frame rate",
            path,
        )
    width, height = stream.codec_context.width, stream.codec_context.height
    if width and height:
        _check_size(width, height, path)


def _check_size(width: int, height: int, path: str) -> None:
    if min(width, height) < MIN_FRAME_SIDE or max(width, height) > MAX_FRAME_SIDE:
        raise BadFrameSize(
            f"frame size {width}x{height} is outside [{MIN_FRAME_SIDE}, {MAX_FRAME_SIDE}] px per "
            "side; re-encode or skip this video",
            path,
        )


def _build_graph(
    stream: av.video.stream.VideoStream, rates: list[float]
) -> tuple[av.filter.Graph, list]:
    """buffer -> split -> [fps=r, format=rgb24 -> sink] for each rate."""
    graph = av.filter.Graph()
    source = graph.add_buffer(template=stream)
    split = graph.add("split", str(len(rates)))
    source.link_to(split)
    sinks = []
    for index, rate in enumerate(rates):
        fps = graph.add("fps", f"fps={rate}")
        rgb = graph.add("format", "pix_fmts=rgb24")
        sink = graph.add("buffersink")
        split.link_to(fps, index, 0)
        fps.link_to(rgb)
        rgb.link_to(sink)
        sinks.append(sink)
    graph.configure()
    return graph, sinks


def _drain(sinks: list, streams: list[_FrameStream]) -> None:
    for sink, frames in zip(sinks, streams):
        while True:
            try:
                frames.add(sink.pull())
            except (BlockingIOError, EOFError):
                break


def decode_video_frames(
    path: str | os.PathLike,
    *,
    clip_fps: float = 8.0,
    clip_size: int = 384,
    clip_frames: int = 64,
    sync_fps: float = 25.0,
    sync_size: int = 224,
    sync_frames: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes ``path`` once into resized uint8 CLIP frames and sync frames, both from t = 0.

    Returns (clip (clip_frames, 3, clip_size, clip_size) uint8, sync (sync_frames, 3,
    sync_size, sync_size) uint8); ``*_frames_to_float`` finish the transforms. Decoding stops as soon
    as both streams have their frames. Raises a MediaError subclass: UnreadableMedia,
    NoVideoStream, BadFrameRate, BadFrameSize, or TooShort when the video yields fewer frames
    than asked for at either rate (shorter than clip_frames / clip_fps seconds).
    """
    path = str(path)
    if not Path(path).is_file():
        raise UnreadableMedia("video file does not exist", path)
    streams = [
        _FrameStream(clip_frames, clip_size, lambda x: resize_clip_frames(x, clip_size)),
        _FrameStream(sync_frames, sync_size, lambda x: resize_sync_frames(x, sync_size)),
    ]
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise NoVideoStream("the file has no video stream", path)
            stream = container.streams.video[0]
            _check_stream(stream, path)
            stream.thread_type = "AUTO"
            if stream.format is None:
                raise UnreadableMedia("the video stream has no known pixel format", path)
            graph, sinks = _build_graph(stream, [clip_fps, sync_fps])
            for frame in container.decode(stream):
                if frame.pts is None:
                    raise UnreadableMedia("decoded video frames carry no timestamps", path)
                _check_size(frame.width, frame.height, path)
                graph.push(frame)
                _drain(sinks, streams)
                if all(s.full for s in streams):
                    break
            else:
                graph.push(None)
                _drain(sinks, streams)
    except av.FFmpegError as error:
        raise UnreadableMedia(f"cannot decode video: {error}", path) from error
    for frames, fps in zip(streams, (clip_fps, sync_fps)):
        if not frames.full:
            raise TooShort(
                f"video gives {frames.count} frames at {fps:g} fps, {frames.needed} needed "
                f"({frames.needed / fps:g} s); use videos of at least that duration",
                path,
            )
    return streams[0].result(), streams[1].result()


def load_video_frames(path: str | os.PathLike, **options: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode_video_frames`` with the float transforms applied: (clip float32 in [0, 1],
    sync float32 in [-1, 1]), exactly the reference's frames. ``options`` as there."""
    clip, sync = decode_video_frames(path, **options)
    return clip_frames_to_float(clip), sync_frames_to_float(sync)
