"""gin/example.gin end to end, shortened: every stage runs and leaves what the README promises."""

from __future__ import annotations

from pathlib import Path

import torch

from mmgin import cli, io
from mmgin.model import get_network

REPO = Path(__file__).resolve().parents[1]


def test_example_pipeline_runs_every_stage(tmp_path):
    out = tmp_path / "example_output"
    params = [
        f"OUTPUT_DIR = '{out}'",
        "MakeExampleData.num_videos = 1",
        "MakeExampleData.num_audios = 1",
        "Train.num_iterations = 4",
        "Train.log_every = 2",
        "Train.val_every = 2",
        "Train.sample_every = 4",
        "Train.checkpoint_every = 4",
        "Train.ema_snapshot_every = 2",
        "Train.tensorboard_samples = 1",
        "FlowMatching.num_steps = 2",
    ]
    assert cli.run(["gin/example.gin"], params, [str(REPO)], dry_run=False) == 0

    assert len(list((out / "media" / "videos").glob("*.mp4"))) == 1
    assert (out / "stores" / "video-16k" / "meta.json").is_file()
    assert (out / "stores" / "audio-16k" / "meta.json").is_file()
    train = out / "train"
    assert (train / "checkpoints" / "ckpt_000000004.pth").is_file()
    assert len(list((train / "samples" / "000000004").glob("*.flac"))) == 1
    assert list((train / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (train / "ema_ckpts").glob("*.pt")) == ["0.2.pt", "0.4.pt", "1.2.pt", "1.4.pt"]
    for path in (train / "ema_final.pth", out / "ema" / "ema_sigma0.08_step4.pth"):
        weights = io.load_torch(path)
        network = get_network("tiny_16k")
        network.load_weights(weights)  # the released format: loads strictly
        assert all(torch.isfinite(v).all() for v in weights.values())
