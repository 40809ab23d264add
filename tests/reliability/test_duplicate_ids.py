"""Repeated ids: every item gets its own output file (training samples, Evaluate's flac and mp4),
and the counts Evaluate logs and records are the files on disk.

A repeated id's first item keeps `<id>`, later ones are `<id>-1`, `<id>-2`, ... skipping names
another id has (here `dup-1`, a real id, so the repeats of `dup` are `dup-2` and `dup-3`).
"""

from __future__ import annotations

import json
import logging as std_logging

import pytest
import torch

from mmgin import io

from .harness import TRAIN_FILES, run_in_process, train_params
from .test_security import write_store_with_ids

pytestmark = pytest.mark.usefixtures("scenario")
IDS = ["dup", "other", "dup", "dup-1", "dup", "video_000"]
NAMES = ["dup", "other", "dup-2", "dup-1", "dup-3", "video_000"]


def test_training_samples_of_repeated_ids_are_one_file_each(example_workspace, tmp_path):
    store = write_store_with_ids(tmp_path / "stores" / "repeated", IDS)
    out = tmp_path / "run"
    params = train_params(example_workspace, out, **{
        "VAL_STORE": str(store), "Train.num_iterations": 1, "SamplingConfig.every": 1,
        "SamplingConfig.num_samples": len(IDS), "SamplingConfig.batch_size": 4, "ValidationConfig.every": 1000,
        "Train.ema": None})
    params = [p for p in params if not p.startswith("Train.codec")] + ["Train.codec = @train/AudioCodec()"]
    run_in_process(TRAIN_FILES, params)
    written = sorted(p.name for p in (out / "samples" / "000000001").glob("*.flac"))
    assert written == sorted(f"{name}.flac" for name in NAMES)


def test_evaluate_writes_one_file_per_item_and_counts_what_is_on_disk(example_workspace, tmp_path, caplog):
    from mmgin.model import get_network

    store = write_store_with_ids(tmp_path / "stores" / "repeated", IDS, duration=2.0)
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in ("dup", "video_000"):
        (sources / f"{name}.mp4").write_bytes((example_workspace / "videos" / "video_000.mp4").read_bytes())
    network = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.full((20,), 0.5),
                          empty_string_feat=torch.zeros(77, 1024))
    weights = tmp_path / "mmaudio_tiny_16k.pth"
    io.save_torch(network.state_dict(), weights)
    out = tmp_path / "eval"
    with caplog.at_level(std_logging.INFO):
        run_in_process(["gin/evaluate_16k.gin", "gin/audio/tiny.gin", "gin/test/tiny_encoders.gin"],
                       ["NETWORK = 'tiny_16k'", "FlowMatching.num_steps = 1", "Evaluate.batch_size = 4",
                        "Evaluate.duration = 2.0", f"WEIGHTS = '{weights}'", f"OUTPUT_DIR = '{out}'",
                        f"STORE = '{store}'", f"SOURCE_VIDEOS = '{sources}'"])
    flacs = sorted(p.name for p in (out / "test-sampled").glob("*.flac"))
    assert flacs == sorted(f"{name}.flac" for name in NAMES)
    mp4s = sorted(p.name for p in (out / "test-sampled-videos").glob("*.mp4"))
    assert mp4s == ["dup-2.mp4", "dup-3.mp4", "dup.mp4", "video_000.mp4"]  # each item of a video
    assert json.loads((out / "metrics.json").read_text())["generated"] == len(flacs)
    assert f"wrote {len(flacs)} flac files" in caplog.text
