"""Audio decoding of real files written here with PyAV: codecs, containers, rates, channel layouts,
sample formats; the reference preparation order; and the errors bad files raise."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from mmgin.media.audio import decode_audio, load_audio
from mmgin.media.resample import resample
from mmgin.media.errors import MediaError
from mmgin.media.write import write_audio

FREQ = 440.0
AMPLITUDE = 0.5


def _tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    """(channels, frames) float32: one sine per channel, channel c scaled by 1/(c+1)."""
    t = np.arange(int(round(rate * seconds))) / rate
    base = AMPLITUDE * np.sin(2 * math.pi * FREQ * t)
    return np.stack([base / (c + 1) for c in range(channels)]).astype(np.float32)


def _as_frame_array(signal: np.ndarray, sample_format: str) -> np.ndarray:
    planar = sample_format.endswith("p")
    name = sample_format.rstrip("p")
    data = signal if planar else signal.T.reshape(1, -1)
    if name == "s16":
        return np.round(data * 32767).astype(np.int16)
    if name == "s32":
        return np.round(data * 2147483647).astype(np.int32)
    if name == "u8":
        return np.round(data * 127 + 128).astype(np.uint8)
    if name == "dbl":
        return data.astype(np.float64)
    return data.astype(np.float32)


def _write(path: Path, container: str, codec: str, sample_format: str, signal: np.ndarray, rate: int,
           video: bool = False) -> Path:
    """Encodes ``signal`` with PyAV (optionally with a small video track first)."""
    channels = signal.shape[0]
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(str(path), "w", format=container) as out:
        if video:
            vstream = out.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if video:
            for i in range(int(signal.shape[1] / rate * 10)):
                image = np.full((48, 64, 3), (i * 20) % 256, np.uint8)
                for packet in vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
        frame = av.AudioFrame.from_ndarray(_as_frame_array(signal, sample_format), format=sample_format,
                                           layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


# (file name, container, codec, sample format, native rate, channels, lossless)
CASES = [
    ("s16.wav", "wav", "pcm_s16le", "s16", 48000, 2, True),
    ("s24.wav", "wav", "pcm_s24le", "s32", 44100, 1, True),
    ("flt.wav", "wav", "pcm_f32le", "flt", 22050, 1, True),
    ("dbl.wav", "wav", "pcm_f64le", "dbl", 16000, 2, True),
    ("u8_8k.wav", "wav", "pcm_u8", "u8", 8000, 1, True),
    ("six_96k.flac", "flac", "flac", "s16", 96000, 6, True),
    ("s16p.m4a", "ipod", "alac", "s16p", 32000, 2, True),
    ("s32p.m4a", "ipod", "alac", "s32p", 44100, 1, True),
    ("tone.mkv", "matroska", "pcm_s16le", "s16", 24000, 1, True),
    ("aac.mkv", "matroska", "aac", "fltp", 44100, 2, False),
    ("tone.mp3", "mp3", "libmp3lame", "fltp", 44100, 2, False),
    ("tone.m4a", "ipod", "aac", "fltp", 48000, 2, False),
    ("tone.ogg", "ogg", "libopus", "flt", 48000, 2, False),
    ("tone.webm", "webm", "libopus", "flt", 48000, 1, False),
]


@pytest.mark.parametrize("name,container,codec,sample_format,rate,channels,lossless", CASES,
                         ids=[c[0] for c in CASES])
def test_decodes_codecs_rates_and_layouts(tmp_path, name, container, codec, sample_format, rate, channels, lossless):
    seconds = 0.6
    signal = _tone(rate, seconds, channels)
    path = _write(tmp_path / name, container, codec, sample_format, signal, rate)

    decoded = decode_audio(path)
    assert decoded.sample_rate == rate
    assert decoded.samples.shape[0] == channels and decoded.samples.dtype == torch.float32
    if lossless:
        assert decoded.num_frames == signal.shape[1]
        step = {"u8": 1 / 128, "s16": 1 / 32768, "s16p": 1 / 32768}.get(sample_format, 1e-6)
        assert np.abs(decoded.samples.numpy() - signal).max() <= step
    else:  # encoder delay and padding: at most a few codec frames extra
        assert signal.shape[1] <= decoded.num_frames <= signal.shape[1] + 4096

    target = 16000
    waveform = load_audio(path, target, normalize=False)
    expected = math.ceil(decoded.num_frames * target / rate)
    assert waveform.shape == (expected,) and waveform.dtype == torch.float32
    if lossless:  # the channel mean of the tone survives resampling (away from the edges)
        mono_tone = torch.from_numpy(_tone(target, seconds, channels).mean(axis=0))
        middle = slice(target // 10, expected - target // 10)
        assert torch.allclose(waveform[middle], mono_tone[middle], atol=2e-3 + step)


def test_audio_track_of_a_video(tmp_path):
    signal = _tone(22050, 1.0, 2)
    path = _write(tmp_path / "clip.mp4", "mp4", "aac", "fltp", signal, 22050, video=True)
    waveform = load_audio(path, 44100, min_samples=44100, max_samples=44100)
    assert waveform.shape == (44100,)
    assert abs(float(waveform.abs().max()) - 0.95) < 0.05


def test_reference_order_normalise_whole_file_then_slice(tmp_path):
    rate = 16000
    loud = _tone(rate, 1.0, 1)
    quiet = _tone(rate, 1.0, 1) * 0.1
    path = write_audio(tmp_path / "two_parts.flac", np.concatenate([loud, quiet], axis=1), rate)

    whole = load_audio(path, rate)
    assert abs(float(whole.abs().max()) - 0.95) < 1e-6
    second = load_audio(path, rate, start_sample=rate, end_sample=2 * rate)
    assert second.shape == (rate,)
    # Normalised by the whole file's peak, not the slice's: the quiet half stays at 1/10.
    assert abs(float(second.abs().max()) - 0.095) < 1e-3
    torch.testing.assert_close(second, whole[rate:])

    # Slicing happens at the native rate, before resampling.
    at_44k = load_audio(path, 44100, start_sample=rate, end_sample=2 * rate)
    torch.testing.assert_close(at_44k, resample(whole[rate:], rate, 44100))
    assert load_audio(path, 44100, min_samples=88200, max_samples=1000).shape == (1000,)


def _reason(call) -> str:
    with pytest.raises(MediaError) as info:
        call()
    assert str(info.value.path) in str(info.value)
    return info.value.reason


def test_bad_files_raise_documented_errors(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert _reason(lambda: load_audio(empty, 16000)) == "unreadable"

    text = tmp_path / "notes.wav"
    text.write_text("this is a text file, not audio\n" * 20)
    assert _reason(lambda: load_audio(text, 16000)) == "unreadable"

    assert _reason(lambda: load_audio(tmp_path / "absent.flac", 16000)) == "unreadable"

    good = _write(tmp_path / "good.m4a", "ipod", "aac", "fltp", _tone(16000, 1.0, 1), 16000)
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # index (moov) lost
    assert _reason(lambda: load_audio(cut, 16000)) == "unreadable"

    flac = write_audio(tmp_path / "good.flac", _tone(16000, 2.0, 1)[0], 16000)
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])  # frame cut mid-way
    assert _reason(lambda: load_audio(cut_flac, 16000)) == "unreadable"

    # A WAV cut short decodes what is left, like FFmpeg; the length requirement then rejects it.
    wav = write_audio(tmp_path / "good.wav", _tone(16000, 2.0, 1)[0], 16000)
    cut_wav = tmp_path / "cut.wav"
    cut_wav.write_bytes(wav.read_bytes()[: wav.stat().st_size // 2])
    assert _reason(lambda: load_audio(cut_wav, 16000, min_samples=32000)) == "too_short"

    video_only = tmp_path / "video_only.mp4"
    with av.open(str(video_only), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(5):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert _reason(lambda: load_audio(video_only, 16000)) == "no_audio_stream"

    silent = write_audio(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    assert _reason(lambda: load_audio(silent, 16000)) == "silent"
    assert load_audio(silent, 16000, normalize=False, reject_silent=False).abs().max() == 0

    short = write_audio(tmp_path / "short.flac", _tone(16000, 0.5, 1)[0], 16000)
    assert _reason(lambda: load_audio(short, 16000, min_samples=128000)) == "too_short"
    assert _reason(lambda: load_audio(short, 16000, start_sample=4000, end_sample=16000)) == "too_short"


def test_write_audio_round_trip(tmp_path):
    signal = torch.from_numpy(_tone(44100, 0.5, 1)[0])
    for name, bits, step in (("a.flac", 16, 1 / 32768), ("a.wav", 16, 1 / 32768), ("b.wav", 32, 0.0)):
        decoded = decode_audio(write_audio(tmp_path / name, signal, 44100, bits=bits))
        assert decoded.sample_rate == 44100
        assert float((decoded.mono() - signal).abs().max()) <= step
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="suffix"):
        write_audio(tmp_path / "a.mp3", signal, 44100)
