"""Typed errors for bad media files.

Extraction programs skip a bad file and record ``error.reason`` (a short snake_case string) in
their failure report; the message is for humans: what is wrong, which file, what to do.
"""

from __future__ import annotations

import os


class MediaError(Exception):
    """A media file that cannot be used; ``reason`` names the kind, ``path`` the file."""

    reason: str = "media_error"

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else str(path)
        where = f" [{self.path}]" if self.path is not None else ""
        super().__init__(f"{message}{where}")
        self.message = message


class UnreadableMedia(MediaError):
    """The container or stream cannot be opened or decoded (corrupt, truncated, not media)."""

    reason = "unreadable"


class NoAudioStream(MediaError):
    """The container holds no audio stream."""

    reason = "no_audio_stream"


class NoVideoStream(MediaError):
    """The container holds no video stream."""

    reason = "no_video_stream"


class TooShort(MediaError):
    """The media is shorter than the clip that was asked for."""

    reason = "too_short"


class SilentAudio(MediaError):
    """The audio is (numerically) silent, so it cannot be peak-normalised."""

    reason = "silent"


class BadFrameRate(MediaError):
    """The video frame rate is missing, zero or not usable."""

    reason = "bad_frame_rate"


class BadFrameSize(MediaError):
    """The decoded video frames have an unusable size."""

    reason = "bad_frame_size"
