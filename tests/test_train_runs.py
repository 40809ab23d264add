"""Training runs end to end on the example stores: two processes equal one with gradient
accumulation, TensorBoard has the documented tags, validation samples are written, a NaN row
is skipped and counted, and fine-tuning starts from a released-format file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import gin
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmgin import cli, dist, io
from mmgin.model import get_network
from mmgin.model.flops import training_flops_per_sample
from mmgin.model.loading import NetworkFileError, read_network_weights
from mmgin.testing.example import train_params, write_synthetic_store
from mmgin.testing.recipe import recipe_state_dict
from mmgin.train import checkpoint as ckpt
from mmgin.train.trainer import NonFiniteError

REPO = Path(__file__).resolve().parents[1]
FILES = ["gin/small_16k.gin", "gin/test/tiny_train.gin"]
PEAK_TFLOPS = 0.25
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def newest_checkpoint(out: Path) -> dict:
    return io.load_torch(ckpt.list_checkpoints(out)[0])


def test_two_processes_equal_one_process_with_accumulation(example_workspace, tmp_path):
    common = {"Train.batch_size": 4, "Train.num_iterations": 3, "CheckpointConfig.every": 3,
              "ValidationConfig.every": 3, "SamplingConfig.every": 3, "SamplingConfig.num_samples": 3,
              "SamplingConfig.tensorboard_samples": 1}
    two = tmp_path / "two"
    args = [*(f"--gin_file={f}" for f in FILES),
            *(f"--gin_param={p}" for p in train_params(example_workspace, two, **common))]
    result = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", str(REPO / "launch.py"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    one = tmp_path / "one"
    cli.run(FILES, train_params(example_workspace, one, **common, **{"Train.micro_batch_size": 2}),
            [str(REPO)], dry_run=False)

    a, b = newest_checkpoint(two), newest_checkpoint(one)
    assert a["world_size"] == 2 and b["world_size"] == 1 and b["accumulation"] == 2
    assert a["iteration"] == b["iteration"] == 3
    changed = 0
    for key, value in a["network"].items():
        torch.testing.assert_close(value, b["network"][key], rtol=1e-5, atol=1e-6, msg=key)
    initial = get_network_like(a)
    changed = sum(not torch.equal(v, initial[k]) for k, v in a["network"].items())
    assert changed > 10  # the steps did train
    # each rank wrote its share of the validation samples
    assert sorted(p.name for p in (two / "samples" / "000000003").glob("*.flac")) == \
        sorted(p.name for p in (one / "samples" / "000000003").glob("*.flac"))
    assert len(list((two / "samples" / "000000003").glob("*.flac"))) == 3


def get_network_like(state: dict) -> dict:
    """The seeded initial weights of the tiny test network (what step 0 starts from)."""
    torch.manual_seed(14159265)
    network = get_network("tiny_16k")
    initial = network.state_dict()
    initial["latent_mean"] = state["network"]["latent_mean"]
    initial["latent_std"] = state["network"]["latent_std"]
    return initial


HOOK_CALLS: list[tuple[Path, int, list[str]]] = []


@gin.configurable("test_train_runs_eval_hook")
def recording_eval_hook(audio_dir, iteration, writer):
    """An evaluation hook as mmgin.eval.hook.EvaluationHook is called: rank 0, after sampling."""
    HOOK_CALLS.append((Path(audio_dir), iteration, sorted(p.name for p in Path(audio_dir).glob("*.flac"))))
    writer.add_scalar("val/test_metric", float(iteration), iteration)
    return {"test_metric": float(iteration)}


@pytest.fixture(scope="module")
def tensorboard_run(example_workspace, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tensorboard") / "run"
    params = train_params(example_workspace, out) + ["SamplingConfig.eval_hook = @test_train_runs_eval_hook",
                                                     f"LogConfig.peak_tflops = {PEAK_TFLOPS}"]
    cli.run(FILES, params, [str(REPO)], dry_run=False)
    return out


def test_tensorboard_has_the_documented_tags(tensorboard_run):
    events = EventAccumulator(str(tensorboard_run / "tensorboard"),
                              size_guidance={"scalars": 0, "images": 0, "audio": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "train/step_time",
                "train/data_wait_fraction", "train/mfu", "train/skipped_updates", "val/loss"):
        assert tag in tags["scalars"], tag
        assert all(torch.isfinite(torch.tensor(e.value)) for e in events.Scalars(tag)), tag
    # MFU against the peak the user gave (a CPU has no known peak: see test_example).
    flops = training_flops_per_sample(get_network("tiny_16k"))
    for mfu, speed in zip(events.Scalars("train/mfu"), events.Scalars("train/samples_per_s"), strict=True):
        assert mfu.value == pytest.approx(flops * speed.value / (PEAK_TFLOPS * 1e12), rel=1e-5)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert {"train/loss_by_t", "val/loss_by_t"} <= set(tags["histograms"])
    assert {"sample/0/audio", "sample/0/audio_gt", "sample/1/audio"} <= set(tags["audio"])
    assert {"sample/0/mel", "sample/0/mel_gt"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "Train.batch_size = 2" in config
    flacs = sorted((tensorboard_run / "samples" / "000000004").glob("*.flac"))
    assert len(flacs) == 2
    assert HOOK_CALLS == [(tensorboard_run / "samples" / "000000004", 4, [p.name for p in flacs])]
    assert [e.value for e in events.Scalars("val/test_metric")] == [4.0]
    assert (tensorboard_run / "ema_final.pth").is_file()


def test_nan_row_is_skipped_and_counted_then_the_run_stops(example_workspace, tmp_path, caplog):
    stores = tmp_path / "stores"
    write_synthetic_store(stores / "clean", "video", 4, seed=1)
    features = write_synthetic_store(stores / "poisoned", "video", 4, seed=2)
    from tensordict import TensorDict
    poisoned = TensorDict.load_memmap(stores / "poisoned")
    poisoned["std"][1] = float("nan")  # one row of the store holds NaN
    assert not torch.isfinite(poisoned["std"][1]).any() and torch.isfinite(features["std"]).all()
    common = {"VIDEO_STORES": [str(stores / "clean"), str(stores / "poisoned")], "AUDIO_STORES": [],
              "VAL_STORE": str(stores / "clean"), "Train.batch_size": 2, "Train.num_iterations": 4,
              "LogConfig.every": 4, "ValidationConfig.every": 100, "SamplingConfig.every": 100,
              "CheckpointConfig.every": 4}
    out = tmp_path / "run"
    cli.run(FILES, train_params(example_workspace, out, **common), [str(REPO)], dry_run=False)
    state = newest_checkpoint(out)
    # 8 rows, 4 steps of 2: exactly one step saw the NaN row, and its update was skipped
    assert state["skipped_updates"] == 1.0
    assert all(torch.isfinite(v).all() for v in state["network"].values())
    assert all(torch.isfinite(t).all() for s in state["optimizer"]["state"].values() for t in s.values())
    assert state["optimizer"]["state"][0]["step"].item() == 3  # three applied updates

    with pytest.raises(NonFiniteError, match="1 updates in a row were skipped"):
        cli.run(FILES, train_params(example_workspace, tmp_path / "stop", **common,
                                    **{"StepConfig.max_consecutive_skips": 1}), [str(REPO)], dry_run=False)


def test_fine_tuning_from_a_released_format_file(example_workspace, tmp_path):
    torch.manual_seed(7)
    released = get_network("tiny_16k", latent_mean=torch.full((20,), 0.5), latent_std=torch.full((20,), 2.0))
    weights = tmp_path / "mmaudio_tiny_16k.pth"
    torch.save(released.state_dict(), weights)  # the released format: a bare state dict
    out = tmp_path / "run"
    cli.run(FILES, train_params(example_workspace, out, **{"CheckpointConfig.weights": str(weights),
                                                           "Train.num_iterations": 2,
                                                           "SamplingConfig.every": 100}),
            [str(REPO)], dry_run=False)
    state = newest_checkpoint(out)
    # the released normalisation is kept (not recomputed from the new data); the weights moved
    assert torch.equal(state["network"]["latent_mean"], released.latent_mean.detach())
    assert torch.equal(state["network"]["latent_std"], released.latent_std.detach())
    moved = [k for k, v in released.state_dict().items() if not torch.equal(v, state["network"][k])]
    assert moved and all(torch.isfinite(v).all() for v in state["network"].values())
    # a training checkpoint also serves as CheckpointConfig.weights: its network part is taken
    from_checkpoint = read_network_weights(ckpt.list_checkpoints(out)[0], "CheckpointConfig.weights")
    assert all(torch.equal(v, state["network"][k]) for k, v in from_checkpoint.state.items())
    io.save_torch({"iteration": 3}, tmp_path / "other.pth")
    with pytest.raises(NetworkFileError, match=r"^CheckpointConfig\.weights=.*other\.pth: holds no network weights"):
        cli.run(FILES, train_params(example_workspace, tmp_path / "other", **{
            "CheckpointConfig.weights": str(tmp_path / "other.pth")}), [str(REPO)], dry_run=False)


def test_released_small_16k_weights_load_into_train(example_workspace, tmp_path):
    """The full-size network from a file in the released format (recipe weights) builds in Train."""
    recipe = recipe_state_dict("mmaudio_small_16k")
    weights = tmp_path / "mmaudio_small_16k.pth"
    torch.save(recipe, weights)
    params = train_params(example_workspace, tmp_path / "run", **{"get_network.checkpoint": str(weights)})
    params += ["get_network.name = 'small_16k'"]
    cli.parse(FILES, params, [str(REPO)])
    with dist.session("cpu"):
        network = cli.build().network
    assert sum(p.numel() for p in network.parameters()) == 157_283_644
    for key in ("latent_std", "empty_clip_feat", "joint_blocks.3.text_block.attn.qkv.weight"):
        assert torch.equal(network.state_dict()[key], recipe[key]), key


def test_dry_run_builds_the_step_and_stops_a_bad_precision_writing_nothing(example_workspace, tmp_path, capsys):
    """--dry_run builds what the run would (the optimizer is in its operative config), and a
    misspelt StepConfig.precision fails it, with nothing written either way."""
    out = tmp_path / "run"
    assert cli.run(FILES, train_params(example_workspace, out), [str(REPO)], dry_run=True) == 0
    printed = capsys.readouterr().out
    assert "adamw.learning_rate = " in printed and "StepConfig.precision = 'fp32'" in printed
    with pytest.raises(ValueError, match=r"^StepConfig\.precision='bf32'; use one of 'fp32', 'bf16', 'fp16'"):
        cli.run(FILES, train_params(example_workspace, out, **{"StepConfig.precision": "bf32"}), [str(REPO)],
                dry_run=True)
    for setting in ("weights", "resume_from", "continue_reference_run"):  # a misspelt start file
        missing = tmp_path.parent / f"no-{setting}.pth"
        with pytest.raises((FileNotFoundError, ckpt.CheckpointError),
                           match=rf"^CheckpointConfig\.{setting}={re.escape(str(missing))} does not exist"):
            cli.run(FILES, train_params(example_workspace, out, **{f"CheckpointConfig.{setting}": str(missing)}),
                    [str(REPO)], dry_run=True)
    assert list(tmp_path.iterdir()) == []


TF32_DURING_RUN: list[tuple[bool, bool]] = []


@gin.configurable("test_train_runs_tf32_hook")
def tf32_hook(audio_dir, iteration, writer):
    """Records the TF32 settings while Train runs (sampling calls it)."""
    TF32_DURING_RUN.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))


def test_tf32_is_set_while_train_runs_and_restored_after(example_workspace, tmp_path):
    """A later pipeline stage must not inherit StepConfig.tf32."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        params = train_params(example_workspace, tmp_path / "run", **{
            "Train.num_iterations": 1, "StepConfig.tf32": True, "Train.ema": None})
        cli.run(FILES, params + ["SamplingConfig.eval_hook = @test_train_runs_tf32_hook"], [str(REPO)],
                dry_run=False)
        assert TF32_DURING_RUN == [(True, True)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
