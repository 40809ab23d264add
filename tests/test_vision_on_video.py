"""Tiny encoders on frames decoded from a real mp4, in float32 and under bf16 autocast."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from mmgin.media.video import load_video_frames
from mmgin.vision import get_clip, get_synchformer
from test_media_video import write_tone  # tests/ is on sys.path (pytest's rootdir-relative imports)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    """9 s, 30 fps, 320x240 h264 + aac, a moving gradient, decoded to CLIP and sync frames."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=16000)
        x = np.arange(320)[None, :, None]
        y = np.arange(240)[:, None, None]
        for i in range(270):
            image = np.concatenate([(x + 4 * i) % 256 + 0 * y, (y + 2 * i) % 256 + 0 * x,
                                    np.full((240, 320, 1), (3 * i) % 256)], axis=2)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        write_tone(container, audio, 9.0)
    return load_video_frames(path)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)


def test_tiny_clip_on_decoded_frames(decoded):
    clip_frames, _ = decoded
    encoder = get_clip(size="tiny")
    with torch.inference_mode():
        features = encoder.encode_frames(clip_frames[None])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features_bf16 = encoder.encode_frames(clip_frames[None])
            text_bf16 = encoder.encode_text(["a car passes by"])
        text = encoder.encode_text(["a car passes by"])
    assert features.shape == (1, 64, 1024) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert (features[0, 0] - features[0, -1]).abs().max() > 1e-3  # frames differ
    assert torch.isfinite(features_bf16).all() and _cosine(features, features_bf16) > 0.99
    assert torch.isfinite(text_bf16).all() and _cosine(text, text_bf16) > 0.99


def test_tiny_synchformer_on_decoded_frames(decoded):
    _, sync_frames = decoded
    encoder = get_synchformer(size="tiny")
    with torch.inference_mode():
        features = encoder(sync_frames[None])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features_bf16 = encoder(sync_frames[None, :24])
    assert features.shape == (1, 192, 768) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert torch.isfinite(features_bf16).all()
    assert _cosine(features[:, :16], features_bf16) > 0.99
