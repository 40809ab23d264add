"""Extraction programs on real media: the example stores, bad files, the clip table."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from mmgin import cli
from mmgin.data import tsv as tsv_io
from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.data.store import StoreError
from mmgin.media.video import clip_frames_to_float, load_video_frames, sync_frames_to_float
from mmgin.programs.extract_video import VideoRowDecoder
from mmgin.programs.make_example_data import write_audio, write_mp4
from mmgin.programs.partition_clips import clip_spans
from mmgin.train.batches import to_device

REPO = Path(__file__).resolve().parents[1]
TINY = "gin/test/tiny_encoders.gin"


def test_example_stores_have_reference_keys_shapes_and_tables(example_workspace):
    stores = example_workspace / "stores"
    video = TensorDict.load_memmap(stores / "video-16k")
    assert video["mean"].shape == (4, 250, 20) and video["mean"].dtype == torch.float32
    assert video["std"].shape == (4, 250, 20) and bool((video["std"] > 0).all())
    assert video["clip_features"].shape == (4, 64, 1024) and video["clip_features"].dtype == torch.bfloat16
    assert video["sync_features"].shape == (4, 192, 768)
    assert video["text_table"].shape == (4, 77, 1024) and video["text_index"].tolist() == [0, 1, 2, 3]
    labels = tsv_io.read_table(example_workspace / "video.tsv")
    assert tsv_io.read_table(stores / "video-16k.tsv") == labels
    assert tsv_io.read_table(stores / "video-16k.failures.tsv") == []
    assert (stores / "video-16k" / "config.gin").is_file()
    assert not (stores / "video-16k.partial").exists()

    audio = TensorDict.load_memmap(stores / "audio-16k")
    assert sorted(audio.keys()) == ["mean", "std", "text_index", "text_table"]
    assert audio["mean"].shape == (4, 250, 20)
    clips = tsv_io.read_table(example_workspace / "clips.tsv")
    captions = {r["id"]: r["caption"] for r in tsv_io.read_table(example_workspace / "captions.tsv")}
    assert tsv_io.read_table(stores / "audio-16k.tsv") == [
        {"id": c["id"], "caption": captions[c["name"]]} for c in clips
    ]

    dataset = ExtractedVideoDataset(store=stores / "video-16k", latent_seq_len=250)
    stored = dataset.__getitems__([0, 1, 2, 3])  # features in the storage dtype: bf16 here
    assert stored["clip_features"].dtype == stored["text_features"].dtype == torch.bfloat16
    batch = to_device(stored, torch.device("cpu"))
    for key in ("a_mean", "a_std", "clip_features", "sync_features", "text_features"):
        assert batch[key].dtype == torch.float32 and bool(torch.isfinite(batch[key]).all())
        assert torch.equal(batch[key], stored[key].float())
    # CLIP image features are unit vectors; different videos give different features
    norms = batch["clip_features"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-2, rtol=0)
    assert not torch.equal(batch["a_mean"][0], batch["a_mean"][1])
    assert len(ExtractedAudioDataset(store=stores / "audio-16k", latent_seq_len=250)) == 4


def test_decoder_hands_over_uint8_frames_that_scale_to_the_reference_frames(example_workspace):
    path = example_workspace / "videos" / "video_000.mp4"
    decoder = VideoRowDecoder((str(path),), 16000, 128000, True, 64, 200)
    item = decoder(0)
    assert item["clip_frames"].dtype == item["sync_frames"].dtype == torch.uint8
    clip, sync = load_video_frames(path)
    assert torch.equal(clip_frames_to_float(item["clip_frames"]), clip)
    assert torch.equal(sync_frames_to_float(item["sync_frames"]), sync)


def test_partition_clips_follows_the_reference_rule(example_workspace, tmp_path):
    total = int(17.5 * 44100)
    spans = clip_spans(total, 44100)
    assert spans == [(0, 357210), (total - 357210, total)]
    assert clip_spans(int(8.0 * 44100), 44100) == []
    assert len(clip_spans(60 * 16000, 16000)) == 5
    clips = tsv_io.read_table(example_workspace / "clips.tsv")
    assert [(c["id"], c["name"], int(c["start_sample"]), int(c["end_sample"])) for c in clips] == [
        (f"audio_00{f}_{i}", f"audio_00{f}", s, e) for f in range(2) for i, (s, e) in enumerate(spans)
    ]

    audios = tmp_path / "audios"
    audios.mkdir()
    write_audio(audios / "long.wav", np.sin(np.arange(9 * 16000) * 0.1) * 0.5, 16000, codec="pcm_s16le")
    write_audio(audios / "short.flac", np.sin(np.arange(3 * 16000) * 0.1) * 0.5, 16000)
    (audios / "broken.flac").write_bytes(b"fLaC but not really")
    cli.run(["gin/partition_clips.gin"], [f"AUDIO_DIR = '{audios}'", f"OUTPUT_DIR = '{tmp_path / 'c.tsv'}'",
                                          "PartitionClips.num_workers = 0"], [str(REPO)], dry_run=False)
    assert tsv_io.read_table(tmp_path / "c.tsv") == [
        {"id": "long_0", "name": "long", "start_sample": "0", "end_sample": str(int(16000 * 8.1))}
    ]
    failures = {r["id"]: r["reason"] for r in tsv_io.read_table(tmp_path / "c.failures.tsv")}
    assert failures == {"broken": "unreadable", "short": "too_short"}
    assert (tmp_path / "c.config.gin").is_file() and not (tmp_path / "c.partial").exists()


def _audio_only_mp4(path: Path, audio: np.ndarray, rate: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_bad_videos_are_skipped_and_reported(example_workspace, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    good = (example_workspace / "videos" / "video_001.mp4").read_bytes()
    (videos / "good.mp4").write_bytes(good)
    (videos / "zero_bytes.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("not a video\n")
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
    rate, seconds = 44100, 8.6
    frames = np.zeros((int(seconds * 25), 48, 64, 3), np.uint8)
    frames[:, 10:30, 10:30] = 200
    tone = (0.5 * np.sin(np.arange(int(seconds * rate)) * 0.05)).astype(np.float32)
    _audio_only_mp4(videos / "audio_only.mp4", tone, rate)
    write_mp4(videos / "no_audio.mp4", frames, None, 25, rate)
    write_mp4(videos / "too_short.mp4", frames[:50], tone[: 2 * rate], 25, rate)
    names = ["zero_bytes", "good", "text", "truncated", "audio_only", "no_audio", "too_short", "absent", "good"]
    tsv_io.write_table(tmp_path / "videos.tsv", ["id", "label"], [{"id": n, "label": f"{n} label"} for n in names])

    store = tmp_path / "stores" / "mixed"
    cli.run(
        ["gin/extract_video_16k.gin", TINY],
        [f"VIDEO_DIR = '{videos}'", f"VIDEO_TSV = '{tmp_path / 'videos.tsv'}'", f"OUTPUT_DIR = '{store}'",
         "ExtractVideoFeatures.num_workers = 1", "ExtractVideoFeatures.batch_size = 4"],
        [str(REPO)], dry_run=False,
    )
    assert tsv_io.read_table(store.parent / "mixed.tsv") == [{"id": "good", "label": "good label"}]
    assert TensorDict.load_memmap(store)["clip_features"].shape == (1, 64, 1024)
    reasons = {r["id"]: r["reason"] for r in tsv_io.read_table(store.parent / "mixed.failures.tsv")}
    assert reasons == {
        "zero_bytes": "unreadable", "text": "unreadable", "truncated": "unreadable",
        "audio_only": "no_video_stream", "no_audio": "no_audio_stream", "too_short": "too_short",
        "absent": "missing_file", "good": "duplicate_id",
    }


def test_compiled_encoders_write_the_same_store(example_workspace, tmp_path):
    """compile=True (aot_eager here: Inductor's C++ build is too slow for CI) traces both
    encoders without changing a stored feature beyond float rounding. In a child process:
    compiling starts autograd's threads, after which this process could not fork workers."""
    store = tmp_path / "video-16k"
    params = [f"VIDEO_DIR = '{example_workspace / 'videos'}'", f"VIDEO_TSV = '{example_workspace / 'video.tsv'}'",
              f"OUTPUT_DIR = '{store}'", "ExtractVideoFeatures.num_workers = 1", "ExtractVideoFeatures.batch_size = 2",
              "ExtractVideoFeatures.compile = True", "ExtractVideoFeatures.compile_backend = 'aot_eager'"]
    command = [sys.executable, "launch.py", "--gin_file=gin/extract_video_16k.gin", f"--gin_file={TINY}"]
    subprocess.run(command + [f"--gin_param={p}" for p in params], cwd=REPO, check=True, capture_output=True)
    eager = TensorDict.load_memmap(example_workspace / "stores" / "video-16k")
    compiled = TensorDict.load_memmap(store)
    assert sorted(compiled.keys()) == sorted(eager.keys())
    for key in ("mean", "std", "text_table", "text_index"):
        assert torch.equal(compiled[key], eager[key]), key
    for key in ("clip_features", "sync_features"):  # bf16 storage: a rounding flip at most
        torch.testing.assert_close(compiled[key].float(), eager[key].float(), rtol=8e-3, atol=1e-5)


def test_a_folder_with_files_in_the_store_place_is_refused_and_kept(example_workspace, tmp_path):
    """An empty folder there is taken (test_example makes every output folder first)."""
    store = tmp_path / "stores" / "clips"
    store.mkdir(parents=True)
    (store / "notes.txt").write_text("mine\n")
    with pytest.raises(StoreError, match="exists but is not a finished store"):
        cli.run(
            ["gin/extract_audio_16k.gin", TINY],
            [f"AUDIO_DIR = '{example_workspace / 'audios'}'", f"CAPTIONS_TSV = '{example_workspace / 'captions.tsv'}'",
             f"CLIPS_TSV = '{example_workspace / 'clips.tsv'}'", f"OUTPUT_DIR = '{store}'"],
            [str(REPO)], dry_run=False,
        )
    assert [p.name for p in store.iterdir()] == ["notes.txt"]


def test_precision_words_and_tf32_defaults_of_the_programs(example_workspace):
    """float32 with TF32 by default; `precision` and `feature_dtype` take mmgin.precision's
    words, and another word is refused naming the setting."""
    from mmgin.programs.extract_audio import ExtractAudioFeatures
    from mmgin.programs.extract_video import ExtractVideoFeatures
    from mmgin.programs.record_null_text import RecordNullText

    for program in (ExtractVideoFeatures, ExtractAudioFeatures, RecordNullText):
        parameters = inspect.signature(program).parameters
        assert parameters["tf32"].default is True and parameters["precision"].default == "fp32", program
    for program in (ExtractVideoFeatures, ExtractAudioFeatures):
        assert inspect.signature(program).parameters["feature_dtype"].default == "bf16", program
    audio = [f"AUDIO_DIR = '{example_workspace / 'audios'}'", f"CAPTIONS_TSV = '{example_workspace / 'captions.tsv'}'",
             f"CLIPS_TSV = '{example_workspace / 'clips.tsv'}'", f"OUTPUT_DIR = '{example_workspace / 'unused'}'"]
    for binding, message in (("ExtractAudioFeatures.precision = 'bfloat16'", "ExtractAudioFeatures.precision='bfloat16'"),
                             ("ExtractAudioFeatures.precision = 'fp16'", "ExtractAudioFeatures.precision='fp16'"),
                             ("ExtractAudioFeatures.feature_dtype = 'float32'",
                              "ExtractAudioFeatures.feature_dtype='float32'")):
        with pytest.raises(ValueError, match=message):
            cli.run(["gin/extract_audio_16k.gin", TINY], audio + [binding], [str(REPO)], dry_run=True)
    assert not (example_workspace / "unused").exists()