"""The Evaluate program end to end: tiny network in released format → flac, mp4, metrics.json."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmgin import cli, io
from mmgin.eval.benchmark import ALL_METRICS
from mmgin.model import NetworkFileError, get_network

REPO = Path(__file__).resolve().parents[1]
EVAL_PUBLIC = Path(__file__).resolve().parent / "fixtures" / "eval_public"
TINY = ["gin/audio/tiny.gin", "gin/test/tiny_encoders.gin"]
FAST = ["NETWORK = 'tiny_16k'", "FlowMatching.num_steps = 1", "Evaluate.batch_size = 2"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """tiny_16k saved as a bare state dict, the released network format."""
    null_text = torch.randn(77, 1024, generator=torch.Generator().manual_seed(0))
    network = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.full((20,), 0.5),
                          empty_string_feat=null_text)
    path = tmp_path_factory.mktemp("weights") / "mmaudio_tiny_16k.pth"
    io.save_torch(network.state_dict(), path)
    return path


def _evaluate(params: list[str]) -> None:
    assert cli.run(["gin/evaluate_16k.gin", *TINY], FAST + params, [str(REPO)], dry_run=False) == 0


def _audio_info(path: Path) -> tuple[str, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, stream.sample_rate, samples


def _check_mp4(path: Path, seconds: float, rate: int) -> None:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        frames = sum(1 for _ in container.decode(video))
        assert frames == round(seconds * float(video.average_rate))
        assert audio.codec_context.name == "aac" and audio.sample_rate == rate
        assert float(audio.duration * audio.time_base) == pytest.approx(seconds, abs=0.07)


def test_evaluate_example_store_writes_flac_mp4_and_metrics(example_workspace, tiny_weights, tmp_path):
    out = tmp_path / "eval"
    # Pred cache files already in place (as if av-benchmark had run) are scored; with no
    # av_bench nothing new is extracted and every metric that needs more says why.
    (out / "test-sampled" / "cache").mkdir(parents=True)
    for name in ("vggish_features.pth", "pann_features.pth"):
        shutil.copy(EVAL_PUBLIC / "pred" / name, out / "test-sampled" / "cache" / name)
    _evaluate([f"WEIGHTS = '{tiny_weights}'", f"OUTPUT_DIR = '{out}'", "Evaluate.limit = 2",
               f"STORE = '{example_workspace / 'stores' / 'video-16k'}'",
               f"SOURCE_VIDEOS = '{example_workspace / 'videos'}'", f"GT_CACHE = '{EVAL_PUBLIC / 'gt'}'"])

    ids = ["video_000", "video_001"]
    assert sorted(p.stem for p in (out / "test-sampled").glob("*.flac")) == ids
    for item in ids:
        assert _audio_info(out / "test-sampled" / f"{item}.flac") == ("flac", 16000, 128000)
        _check_mp4(out / "test-sampled-videos" / f"{item}.mp4", 8.0, 16000)

    document = json.loads((out / "metrics.json").read_text())
    assert document["generated"] == 2 and document["failures"] == []
    assert set(document["metrics"]) == {"FD-VGG", "FD-PANN", "KL-PANNS-softmax", "ISC-PANNS-mean",
                                        "ISC-PANNS-std"}
    assert set(document["metrics"]) | set(document["unavailable"]) == set(ALL_METRICS)
    assert "passt_logits.pth" in document["unavailable"]["KL-PASST-softmax"]
    if importlib.util.find_spec("av_bench") is None:
        assert "av_bench package is not importable" in document["unavailable"]["FD-PASST"]
    events = EventAccumulator(str(out)).Reload()
    assert {"test/FD-VGG", "test/ISC-PANNS-mean"} <= set(events.Tags()["scalars"])


def test_evaluate_videos_with_captions_and_text_only(example_workspace, tiny_weights, tmp_path):
    """2 s clips (the network and the frame counts follow Evaluate.duration) to stay fast."""
    captions = tmp_path / "captions.csv"
    captions.write_text('name,caption\nvideo_000,"a ball bouncing, clicking"\nrain,rain on a roof\n')
    short = ["Evaluate.duration = 2.0"]
    out = tmp_path / "videos"
    _evaluate(short + [f"WEIGHTS = '{tiny_weights}'", f"OUTPUT_DIR = '{out}'", "Evaluate.limit = 1",
                       f"VIDEO_DIR = '{example_workspace / 'videos'}'", f"CAPTIONS_CSV = '{captions}'"])
    assert [p.stem for p in (out / "test-sampled").glob("*.flac")] == ["video_000"]
    # ceil(2 s · 16000 / 256 / 2) = 63 latents of 512 samples.
    assert _audio_info(out / "test-sampled" / "video_000.flac") == ("flac", 16000, 63 * 512)
    _check_mp4(out / "test-sampled-videos" / "video_000.mp4", 2.0, 16000)
    document = json.loads((out / "metrics.json").read_text())
    assert document["metrics"] == {}
    assert all("no ground-truth cache" in r for r in document["unavailable"].values())

    text_only = tmp_path / "text"
    _evaluate(short + [f"WEIGHTS = '{tiny_weights}'", f"OUTPUT_DIR = '{text_only}'",
                       f"CAPTIONS_CSV = '{captions}'"])
    assert sorted(p.stem for p in (text_only / "test-sampled").glob("*.flac")) == ["rain", "video_000"]
    assert not (text_only / "test-sampled-videos").exists()


def _samples(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)[0]


@pytest.mark.slow
def test_torchrun_ranks_take_strided_shards_with_their_own_seeds(tiny_weights, tmp_path, request):
    if "slow" not in request.config.getoption("markexpr"):
        pytest.skip("two torchrun processes take about a minute; run with -m slow")
    captions = tmp_path / "captions.csv"
    captions.write_text("name,caption\n" + "".join(f"item{i},sound number {i}\n" for i in range(3)))
    params = FAST + ["Evaluate.duration = 2.0", f"WEIGHTS = '{tiny_weights}'", f"CAPTIONS_CSV = '{captions}'"]
    args = [f"--gin_file={f}" for f in ["gin/evaluate_16k.gin", *TINY]]
    two = tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "launch.py", *args, *[f"--gin_param={p}" for p in params + [f"OUTPUT_DIR = '{two}'"]]],
        cwd=REPO, check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    one = tmp_path / "one"
    _evaluate(["Evaluate.duration = 2.0", f"WEIGHTS = '{tiny_weights}'", f"CAPTIONS_CSV = '{captions}'",
               f"OUTPUT_DIR = '{one}'"])
    assert json.loads((two / "metrics.json").read_text())["generated"] == 3
    # Rank 0 generates items 0 and 2 with seed 42, rank 1 item 1 with seed 43; a single process
    # draws items 0 and 1 from seed 42, so only item 0 starts from the same noise.
    first = [_samples(d / "test-sampled" / "item0.flac").astype(int) for d in (one, two)]
    assert np.abs(first[0] - first[1]).max() <= 2
    second = [_samples(d / "test-sampled" / "item1.flac").astype(int) for d in (one, two)]
    assert np.abs(second[0] - second[1]).max() > 100


def test_dry_run_builds_the_network_codec_and_source(example_workspace, tiny_weights, tmp_path):
    """A dry run stops on what the run would stop on: no input, a file that holds no network,
    a missing file, a codec of another mode, a bad precision; and passes with good settings."""
    def dry(params: list[str]) -> int:
        return cli.run(["gin/evaluate_16k.gin", *TINY], FAST + [f"OUTPUT_DIR = '{tmp_path}/o'", *params],
                       [str(REPO)], dry_run=True)

    store = f"STORE = '{example_workspace / 'stores' / 'video-16k'}'"
    with pytest.raises(ValueError, match="exactly one input"):
        dry([f"WEIGHTS = '{tiny_weights}'"])
    torch.save([1, 2], tmp_path / "junk.pth")
    with pytest.raises(NetworkFileError, match="^Evaluate.weights=.*junk.pth: holds no network"):
        dry([f"WEIGHTS = '{tmp_path / 'junk.pth'}'", store])
    with pytest.raises(FileNotFoundError, match="^Evaluate.weights=.*missing.pth does not exist"):
        dry([f"WEIGHTS = '{tmp_path / 'missing.pth'}'", store])
    with pytest.raises(ValueError, match="Evaluate.codec is 44k but network tiny_16k"):
        dry([f"WEIGHTS = '{tiny_weights}'", store, "AudioCodec.mode = '44k'"])
    with pytest.raises(ValueError, match="Evaluate.precision='bfloat16'"):
        dry([f"WEIGHTS = '{tiny_weights}'", store, "Evaluate.precision = 'bfloat16'"])
    assert dry([f"WEIGHTS = '{tiny_weights}'", store, "Evaluate.precision = 'fp32'"]) == 0
    assert not (tmp_path / "o").exists()
