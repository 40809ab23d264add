"""An mp4 of a source video with generated audio muxed in (PyAV), for listening to results."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from mmgin import io
from mmgin.media.errors import NoVideoStream, UnreadableMedia

DEFAULT_FPS = Fraction(25)


def _even(n: int) -> int:
    return max(2, n - n % 2)


def mux_video_with_audio(
    video_path: str | os.PathLike,
    audio: torch.Tensor,
    sample_rate: int,
    output_path: str | os.PathLike,
    duration: float = 8.0,
) -> Path:
    """Writes `output_path`: the first `duration` s of `video_path`'s frames re-encoded as H.264
    (yuv420p, even frame size) with `audio` (mono [T] in [-1, 1]) as AAC, cut to `duration`.

    The source's own audio is dropped. Written atomically; raises UnreadableMedia or
    NoVideoStream (with the path) for a video that cannot be read.
    """
    video_path, output_path = Path(video_path), Path(output_path)
    samples = audio.detach().float().cpu().reshape(-1)[: int(round(duration * sample_rate))]
    samples = samples.clamp(-1.0, 1.0).numpy()[None, :].astype(np.float32)
    try:
        with av.open(str(video_path)) as source:
            if not source.streams.video:
                raise NoVideoStream("the file has no video stream", str(video_path))
            in_stream = source.streams.video[0]
            fps = Fraction(in_stream.average_rate) if in_stream.average_rate else DEFAULT_FPS
            with io.atomic_path(output_path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
                video = out.add_stream("libx264", rate=fps)
                video.width = _even(in_stream.codec_context.width)
                video.height = _even(in_stream.codec_context.height)
                video.pix_fmt = "yuv420p"
                sound = out.add_stream("aac", rate=sample_rate, layout="mono")
                for index, frame in enumerate(source.decode(in_stream)):
                    if frame.time is not None and frame.time >= duration:
                        break
                    converted = frame.reformat(width=video.width, height=video.height,
                                               format="yuv420p")
                    converted.pts, converted.time_base = index, 1 / fps
                    out.mux(video.encode(converted))
                out.mux(video.encode(None))
                frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, 0
                out.mux(sound.encode(frame))
                out.mux(sound.encode(None))
    except av.FFmpegError as error:
        raise UnreadableMedia(f"cannot re-encode video: {error}", str(video_path)) from error
    return output_path
