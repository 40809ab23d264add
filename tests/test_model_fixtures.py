"""Reference outputs of the networks with recipe weights loaded from released-format files.

The recipe state dicts have the released `mmaudio_*.pth` layout (bare state dict with the RoPE
tables or the v2 timestep frequencies). small_16k goes through a file and
get_network(checkpoint=); large_44k_v2 (4 GB in float32) is adopted from memory by
network_from_state_dict, the same loading step without the file, so the suite never writes
gigabytes to a CI machine's shared disk.
The end-to-end 25-step sampling and the full large_44k_v2 batch are marked slow; the default
suite checks every Euler step's arithmetic by replaying the reference velocities, the network
velocity at three of the steps, and the first sample of the large network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmgin.model import FlowMatching, MMAudio, NetworkFileError, get_network, network_from_state_dict
from mmgin.testing.recipe import recipe_state_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CFG_STRENGTH = 4.5


def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def _assert_matches(
    actual: torch.Tensor, fixture: dict, key: str, expected: torch.Tensor | None = None
) -> None:
    tol = fixture["meta"]["tolerances"][key]
    expected = fixture["outputs"][key] if expected is None else expected
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=tol["atol"])


def _released_network(name: str, tmp_path_factory: pytest.TempPathFactory) -> MMAudio:
    path = tmp_path_factory.mktemp(name) / f"mmaudio_{name}.pth"
    torch.save(recipe_state_dict(f"mmaudio_{name}"), path)
    network = get_network(name, checkpoint=path).eval()
    path.unlink()
    return network


@pytest.fixture(scope="module")
def small_16k(tmp_path_factory: pytest.TempPathFactory) -> MMAudio:
    return _released_network("small_16k", tmp_path_factory)


@pytest.fixture(scope="module")
def large_44k_v2() -> MMAudio:
    return network_from_state_dict("large_44k_v2", recipe_state_dict("mmaudio_large_44k_v2")).eval()


def _check_network(network: MMAudio, fixture: dict, samples: slice) -> None:
    inputs = {k: v[samples] if v.dim() else v for k, v in fixture["inputs"].items()}
    outputs = {k: v[samples] for k, v in fixture["outputs"].items()}
    assert torch.equal(network.latent_mean.data, fixture["inputs"]["latent_mean"])
    with torch.inference_mode():
        features = inputs["clip_f"], inputs["sync_f"], inputs["text_f"]
        flow = network(inputs["latent"], *features, inputs["t"])
        _assert_matches(flow, fixture, "flow", outputs["flow"])
        conditions = network.preprocess_conditions(*features)
        empty = network.get_empty_conditions(len(inputs["latent"]))
        cfg_flow = network.ode_wrapper(
            inputs["t_cfg"], inputs["latent"], conditions, empty, float(inputs["cfg_strength"])
        )
        _assert_matches(cfg_flow, fixture, "cfg_flow", outputs["cfg_flow"])


def test_small_16k_flow_and_cfg(small_16k: MMAudio) -> None:
    _check_network(small_16k, _fixture("mmaudio_small_16k"), slice(None))


def test_large_44k_v2_flow_first_sample(large_44k_v2: MMAudio) -> None:
    """v2 projections, v2 timestep frequencies and the 192 -> 345 float32 sync indices."""
    fixture = _fixture("mmaudio_large_44k_v2")
    inputs = fixture["inputs"]
    with torch.inference_mode():
        flow = large_44k_v2(inputs["latent"][:1], inputs["clip_f"][:1], inputs["sync_f"][:1],
                            inputs["text_f"][:1], inputs["t"][:1])
    _assert_matches(flow, fixture, "flow", fixture["outputs"]["flow"][:1])


@pytest.mark.slow
def test_large_44k_v2_flow_and_cfg(large_44k_v2: MMAudio) -> None:
    _check_network(large_44k_v2, _fixture("mmaudio_large_44k_v2"), slice(None))


def _sampler(network: MMAudio, fixture: dict):
    inputs = fixture["inputs"]
    conditions = network.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
    empty = network.get_empty_conditions(1)
    return lambda t, x: network.ode_wrapper(t, x, conditions, empty, CFG_STRENGTH)


def test_euler_steps_replayed_from_reference_velocities() -> None:
    """Every step's time and update: x_{i+1} = x_i + (t_{i+1} - t_i) v_i on the CPU grid."""
    fixture = _fixture("euler_small_16k")
    out = fixture["outputs"]
    seen_t, seen_x = [], []

    def replay(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        seen_t.append(t)
        seen_x.append(x)
        return out["trajectory_v"][len(seen_t) - 1]

    fm = FlowMatching(min_sigma=0.0, inference_mode="euler", num_steps=25)
    x1 = fm.to_data(replay, fixture["inputs"]["x0"])
    torch.testing.assert_close(torch.stack(seen_t), out["trajectory_t"], rtol=0, atol=0)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in seen_t)
    _assert_matches(torch.stack(seen_x), fixture, "trajectory_x")
    _assert_matches(x1, fixture, "x1")


def test_euler_velocities_and_unnormalize(small_16k: MMAudio) -> None:
    fixture = _fixture("euler_small_16k")
    out = fixture["outputs"]
    with torch.inference_mode():
        fn = _sampler(small_16k, fixture)
        steps = [24]  # the cfg_flow test covers the wrapper; this checks batch 1 on a late state
        v = torch.stack([fn(out["trajectory_t"][i], out["trajectory_x"][i]) for i in steps])
        _assert_matches(v, fixture, "trajectory_v", out["trajectory_v"][steps])
        x1 = out["x1"].clone()
        assert small_16k.unnormalize(x1) is x1  # in place, as the reference
        _assert_matches(x1, fixture, "x1_unnormalized")
        assert small_16k.normalize(x1) is x1
        torch.testing.assert_close(x1, out["x1"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_euler_25_steps_end_to_end(small_16k: MMAudio) -> None:
    fixture = _fixture("euler_small_16k")
    trajectory: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        fn = _sampler(small_16k, fixture)

        def recording(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            v = fn(t, x)
            trajectory.append((t, x, v))
            return v

        x1 = FlowMatching(num_steps=25).to_data(recording, fixture["inputs"]["x0"])
        for i, key in enumerate(["trajectory_t", "trajectory_x", "trajectory_v"]):
            _assert_matches(torch.stack([step[i] for step in trajectory]), fixture, key)
        _assert_matches(x1, fixture, "x1")
        _assert_matches(small_16k.unnormalize(x1.clone()), fixture, "x1_unnormalized")


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="^get_network.checkpoint=.*missing.pth does not exist"):
        get_network("tiny_16k", checkpoint=tmp_path / "missing.pth")
    path = tmp_path / "tiny_16k.pth"
    trained = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.ones(20),
                          empty_string_feat=torch.zeros(77, 1024)).state_dict()
    torch.save(trained, path)
    with pytest.raises(NetworkFileError, match="^get_network.checkpoint=.*16k.pth: the weights do not fit"):
        get_network("tiny_44k", checkpoint=path)
    torch.save({"network": trained}, path)
    with pytest.raises(NetworkFileError, match="holds no network weights"):
        get_network("tiny_16k", checkpoint=path)
    state = dict(trained)
    del state["empty_sync_feat"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="empty_sync_feat"):
        get_network("tiny_16k", checkpoint=path)
