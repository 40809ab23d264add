"""gin/example.gin end to end, shortened: every stage runs and leaves what the README promises."""

from __future__ import annotations

import logging
from pathlib import Path

import gin
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmgin import cli, io
from mmgin.model import get_network

REPO = Path(__file__).resolve().parents[1]


def test_example_pipeline_runs_every_stage(tmp_path, caplog):
    out = tmp_path / "example_output"
    params = [
        f"OUTPUT_DIR = '{out}'",
        "MakeExampleData.num_videos = 1",
        "MakeExampleData.num_audios = 1",
        "Train.num_iterations = 4",
        "LogConfig.every = 2",
        "ValidationConfig.every = 2",
        "SamplingConfig.every = 4",
        "CheckpointConfig.every = 4",
        "EMAConfig.snapshot_every = 2",
        "SamplingConfig.tensorboard_samples = 1",
        "FlowMatching.num_steps = 2",
    ]
    # People make output folders first (mkdir -p): every program takes them when empty.
    for folder in ("media", "stores/video-16k", "stores/audio-16k", "train", "ema"):
        (out / folder).mkdir(parents=True)
    with caplog.at_level(logging.INFO):
        assert cli.run(["gin/example.gin"], params, [str(REPO)], dry_run=False) == 0

    assert len(list((out / "media" / "videos").glob("*.mp4"))) == 1
    assert (out / "stores" / "video-16k" / "meta.json").is_file()
    assert (out / "stores" / "audio-16k" / "meta.json").is_file()
    train = out / "train"
    assert (train / "checkpoints" / "ckpt_000000004.pth").is_file()
    assert len(list((train / "samples" / "000000004").glob("*.flac"))) == 1
    # A CPU has no known peak FLOP/s: neither the log nor TensorBoard shows an MFU.
    progress = [r.getMessage() for r in caplog.records if " samples/s | " in r.getMessage()]
    assert len(progress) == 2 and not any("MFU" in line for line in progress), progress
    events = EventAccumulator(str(train / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/samples_per_s" in scalars and not [t for t in scalars if "mfu" in t.lower()], scalars
    # The records hold every value used: the pipeline's all of them, Train's its optimizer and
    # schedule, recorded once built (TensorBoard's copy, written then, is already complete).
    assert (out / "operative_config.gin").read_text() == gin.operative_config_str()
    record = (train / "operative_config.gin").read_text()
    for binding in ("adamw.learning_rate = 0.001", "adamw.betas = (0.9, 0.95)", "adamw.weight_decay = 1e-06",
                    "WarmupConstantSchedule.warmup_steps = 20"):
        assert binding in record, binding
    logged = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert logged == "```\n" + record + "\n```"
    assert io.load_torch(train / "checkpoints" / "ckpt_000000004.pth")["config"] == record
    assert sorted(p.name for p in (train / "ema_ckpts").glob("*.pt")) == ["0.2.pt", "0.4.pt", "1.2.pt", "1.4.pt"]
    for path in (train / "ema_final.pth", out / "ema" / "ema_sigma0.08_step4.pth"):
        weights = io.load_torch(path)
        network = get_network("tiny_16k")
        network.load_weights(weights)  # the released format: loads strictly
        assert all(torch.isfinite(v).all() for v in weights.values())
