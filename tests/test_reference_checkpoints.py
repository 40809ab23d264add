"""Checkpoints both ways: what mmgin writes has the released files' exact layout (manifests) and
loads as the reference loads it; the reference trainer's files start or continue an mmgin run.

Reference-format inputs are built here from the manifests (recipe weights) and from torch's own
AdamW / SequentialLR state dicts; no reference code is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR, SequentialLR

from mmgin import cli, io
from mmgin.model import get_network, read_network_weights
from mmgin.model.network import RECOMPUTED_KEYS
from mmgin.testing.example import train_params
from mmgin.testing.recipe import ManifestEntry, read_manifest, recipe_state_dict
from mmgin.train import checkpoint as ckpt
from mmgin.train import reference_run
from mmgin.train.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]
FILES = ["gin/small_16k.gin", "gin/test/tiny_train.gin"]
VARIANTS = ["small_16k", "small_44k", "medium_44k", "large_44k", "large_44k_v2"]
FROZEN = {"latent_mean", "latent_std", "empty_string_feat"}


def layout(state: dict) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in state.items()]


def load_as_the_reference_does(network: torch.nn.Module, state: dict) -> None:
    """MMAudio.load_weights of the reference: drop the recomputed tables, then a strict load."""
    network.load_state_dict({k: v for k, v in state.items() if k not in RECOMPUTED_KEYS}, strict=True)


@pytest.mark.parametrize("name", VARIANTS)
def test_released_layout_of_every_variant_equals_its_manifest(name):
    with torch.device("meta"):
        network = get_network(name)
    expected = [(e.key, e.shape, e.dtype) for e in read_manifest(f"mmaudio_{name}")]
    assert layout(network.released_state_dict()) == expected


def test_export_of_released_weights_equals_the_manifest_and_the_values(tmp_path):
    recipe = recipe_state_dict("mmaudio_small_16k")
    source = tmp_path / "mmaudio_small_16k.pth"
    torch.save(recipe, source)
    out = tmp_path / "export.pth"
    cli.run(["gin/model/small_16k.gin", "gin/export_weights.gin"],
            [f"CHECKPOINT = '{source}'", f"OUTPUT = '{out}'"], [str(REPO)], dry_run=False)
    exported = io.load_torch(out)
    assert layout(exported) == [(e.key, e.shape, e.dtype) for e in read_manifest("mmaudio_small_16k")]
    for key, value in recipe.items():
        if key not in RECOMPUTED_KEYS:
            assert torch.equal(exported[key], value), key
    with torch.device("meta"):
        tables = get_network("small_16k").released_tables()  # computed, not the recipe's noise
    assert all(torch.equal(exported[k], v) for k, v in tables.items())


def test_ema_final_and_an_export_of_a_checkpoint_load_strictly_as_the_reference_loads(example_workspace, tmp_path):
    out = tmp_path / "run"
    cli.run(FILES, train_params(example_workspace, out, **{"SamplingConfig.every": 100}), [str(REPO)], dry_run=False)
    network = get_network("tiny_16k")
    expected_keys = list(network.released_state_dict())
    ema_final = io.load_torch(out / "ema_final.pth")
    assert list(ema_final) == expected_keys and all(v.dtype == torch.float32 for v in ema_final.values())
    load_as_the_reference_does(network, ema_final)

    checkpoint = ckpt.list_checkpoints(out)[0]
    exported = tmp_path / "tiny_16k_last.pth"
    cli.run(["gin/model/tiny_16k.gin", "gin/export_weights.gin"],
            [f"CHECKPOINT = '{checkpoint}'", f"OUTPUT = '{exported}'"], [str(REPO)], dry_run=False)
    weights = io.load_torch(exported)
    assert list(weights) == expected_keys
    load_as_the_reference_does(network, weights)
    trained = io.load_torch(checkpoint)["network"]
    assert all(torch.equal(network.state_dict()[k], v) for k, v in trained.items())


# ---------------------------------------------------------------- reference training checkpoints
def reference_optimizer_and_schedule(iteration: int) -> tuple[dict, dict]:
    """The param group and SequentialLR state of the reference's AdamW and schedule after
    ``iteration`` scheduler steps, from torch's own classes (one stand-in parameter)."""
    probe = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4, betas=(0.9, 0.95),
                              eps=1e-6, weight_decay=1e-6)
    warmup = LambdaLR(probe, lambda step: (step + 1) / 1001)
    decay = MultiStepLR(probe, [240_000, 270_000], 0.1)
    schedule = SequentialLR(probe, [warmup, decay], milestones=[1000])
    for _ in range(iteration):
        probe.step()
        schedule.step()
    group = probe.state_dict()["param_groups"][0] | {"fused": True}
    return group, schedule.state_dict()


def reference_checkpoint(entries: list[ManifestEntry], weights: dict, iteration: int,
                         ema_step_as_buffers: bool = False) -> dict:
    """<exp>_ckpt_last.pth as the reference writes it after ``iteration`` steps: the moment of
    trainable parameter i is filled with a value of its own, so a wrong mapping would show."""
    trainable = [e for e in entries if e.key not in FROZEN and e.key not in RECOMPUTED_KEYS]
    group, schedule = reference_optimizer_and_schedule(iteration)
    state = {
        i: {"step": torch.tensor(float(iteration)), "exp_avg": torch.full(e.shape, (i + 1) * 1e-7),
            "exp_avg_sq": torch.full(e.shape, (i + 1) * 1e-9)}
        for i, e in enumerate(trainable)
    }
    ema = {}
    for profile in (0, 1):
        for e in entries:
            if e.key not in RECOMPUTED_KEYS:
                ema[f"ema_models.{profile}.ema_model.{e.key}"] = weights[e.key]
        if ema_step_as_buffers:  # ema-pytorch's layout: buffers instead of the extra state
            ema[f"ema_models.{profile}.initted"] = torch.tensor(True)
            ema[f"ema_models.{profile}.step"] = torch.tensor(iteration)
        else:
            ema[f"ema_models.{profile}._extra_state"] = {"initted": torch.tensor(True), "step": torch.tensor(iteration)}
    ema["ema_models.1.ema_model.empty_clip_feat"] = torch.full((1, 1024), 0.25)
    optimizer = {"state": state, "param_groups": [group | {"params": list(range(len(trainable)))}]}
    return {"it": iteration - 1, "weights": weights, "optimizer": optimizer, "scheduler": schedule, "ema": ema}


def test_a_reference_training_checkpoint_of_small_16k_continues(example_workspace, tmp_path):
    entries = read_manifest("mmaudio_small_16k")
    weights = recipe_state_dict(entries)
    iteration = 1003  # past the warmup: SequentialLR has switched to the step decay
    path = tmp_path / "small_16k_ckpt_last.pth"
    torch.save(reference_checkpoint(entries, weights, iteration), path)
    with torch.device("meta"):  # the moments map by order: the trainable order is the manifest's
        names = [n for n, p in get_network("small_16k").named_parameters() if p.requires_grad]
    assert names == [e.key for e in entries if e.key not in FROZEN and e.key not in RECOMPUTED_KEYS]

    out = tmp_path / "run"
    params = train_params(example_workspace, out, **{
        "CheckpointConfig.continue_reference_run": str(path), "Train.num_iterations": iteration + 1,
        "CheckpointConfig.every": 100_000, "EMAConfig.snapshot_every": 100_000,
        "EMAConfig.final_sigma_rel": None, "Train.val_dataset": None, "adamw.eps": 1e-6,
    }) + ["get_network.name = 'small_16k'"]
    cli.run(FILES, params, [str(REPO)], dry_run=False)
    state = io.load_torch(ckpt.list_checkpoints(out)[0])
    assert state["iteration"] == iteration + 1
    assert state["scheduler"]["last_epoch"] == iteration + 1
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4, rel=1e-9)
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {iteration + 1.0}
    for index in (0, len(names) // 2, len(names) - 1):  # each moment continued its own (beta2 0.95)
        smallest = float(state["optimizer"]["state"][index]["exp_avg_sq"].min())
        assert 0.9499 * (index + 1) * 1e-9 <= smallest < 0.96 * (index + 1) * 1e-9, index
    ema = state["ema"]
    assert ema["step"] == iteration + 1
    index = ema["keys"].index("empty_clip_feat")
    assert float(ema["profiles"][1][index].mean()) > 0.2 and float(ema["profiles"][0][index].abs().max()) < 0.1
    for key in ("latent_mean", "empty_string_feat"):  # the reference run's frozen tensors are kept
        assert torch.equal(state["network"][key], weights[key])
    moved = sum(not torch.equal(state["network"][k], weights[k]) for k in names)
    assert moved > 100

    # its weights alone start a run too (CheckpointConfig.weights), as do the bare weight files
    found = read_network_weights(path, "CheckpointConfig.weights")
    assert all(torch.equal(v, weights[k]) for k, v in found.state.items())


def test_reference_settings_that_disagree_are_named(example_workspace, tmp_path):
    network = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.ones(20),
                          empty_string_feat=torch.zeros(77, 1024))
    released = network.released_state_dict()
    entries = [ManifestEntry(k, tuple(v.shape), v.dtype) for k, v in released.items()]
    path = tmp_path / "tiny_ckpt_last.pth"
    torch.save(reference_checkpoint(entries, released, 20), path)
    run = lambda **extra: cli.run(FILES, train_params(example_workspace, tmp_path / "run", **{  # noqa: E731
        "CheckpointConfig.continue_reference_run": str(path), "Train.num_iterations": 22, **extra}), [str(REPO)], dry_run=False)
    with pytest.raises(CheckpointError, match=r"adamw.eps = 1e-06, this run sets 1e-08; set adamw.eps = 1e-06"):
        run()
    with pytest.raises(CheckpointError, match=r"learning rate at iteration 20 is 2.0979e-06, this run's schedule gives 4.19162e-06"):
        run(**{"adamw.eps": 1e-6, "WarmupStepSchedule.warmup_steps": 500})
    with pytest.raises(CheckpointError, match="another network variant"):
        reference_run.load_weights(get_network("tiny_44k"), reference_run.load(path), path)
    run(**{"adamw.eps": 1e-6})
    state = io.load_torch(ckpt.list_checkpoints(tmp_path / "run")[0])
    assert state["iteration"] == 22 and state["ema"]["step"] == 22
    buffers = tmp_path / "buffers_ckpt_last.pth"
    torch.save(reference_checkpoint(entries, released, 20, ema_step_as_buffers=True), buffers)
    cli.run(FILES, train_params(example_workspace, tmp_path / "buffers_run", **{
        "CheckpointConfig.continue_reference_run": str(buffers), "Train.num_iterations": 21, "adamw.eps": 1e-6}),
        [str(REPO)], dry_run=False)
    assert io.load_torch(ckpt.list_checkpoints(tmp_path / "buffers_run")[0])["ema"]["step"] == 21
    with pytest.raises(ValueError, match="set one of CheckpointConfig.weights, CheckpointConfig.continue_reference_run"):
        run(**{"adamw.eps": 1e-6, "CheckpointConfig.weights": str(path)})
    with pytest.raises(CheckpointError, match="not a reference training checkpoint"):
        io.save_torch(released, tmp_path / "bare.pth")
        cli.run(FILES, train_params(example_workspace, tmp_path / "bare_run", **{
            "CheckpointConfig.continue_reference_run": str(tmp_path / "bare.pth")}), [str(REPO)], dry_run=False)
