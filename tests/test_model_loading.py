"""mmgin.model.loading: every layout that holds a network loads the same tensors, and every file
that holds none is one error naming the setting that gave it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from mmgin import io, weights
from mmgin.model import (MMAudio, NetworkFileError, get_network, load_network, load_weights_into,
                         read_network_weights)

SETTING = "Evaluate.weights"


def _trained(name: str = "tiny_16k") -> MMAudio:
    """A tiny network with finite statistics and null text, as a trained one has."""
    dim = 20 if name.endswith("16k") else 40
    generator = torch.Generator().manual_seed(0)
    return get_network(name, latent_mean=torch.randn(dim, generator=generator),
                       latent_std=torch.rand(dim, generator=generator) + 0.5,
                       empty_string_feat=torch.randn(77, 1024, generator=generator))


@pytest.fixture(scope="module")
def network() -> MMAudio:
    return _trained()


@pytest.fixture(scope="module")
def layouts(network, tmp_path_factory) -> dict[str, tuple[Path, int | None]]:
    """The four layouts, each file with the iteration it records."""
    root = tmp_path_factory.mktemp("layouts")
    state = network.state_dict()
    files = {
        "released": (network.released_state_dict(), None),
        "ema": (state, None),
        "mmgin_checkpoint": ({"iteration": 7, "network": state, "optimizer": {}, "run_id": "x"}, 7),
        "reference_checkpoint": ({"it": 3, "weights": state, "optimizer": {}, "scheduler": {},
                                  "ema": {}}, 3),
    }
    for name, (content, _) in files.items():
        io.save_torch(content, root / f"{name}.pth")
    return {name: (root / f"{name}.pth", iteration) for name, (_, iteration) in files.items()}


def _same(a: MMAudio, b: MMAudio) -> bool:
    other = b.state_dict()
    return all(torch.equal(v, other[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("layout", ["released", "ema", "mmgin_checkpoint", "reference_checkpoint"])
def test_every_layout_loads_the_same_tensors(network, layouts, layout):
    path, iteration = layouts[layout]
    assert read_network_weights(path, SETTING).iteration == iteration
    loaded, found = load_network("tiny_16k", path, SETTING)
    assert found == iteration and _same(loaded, network)
    fresh = get_network("tiny_16k")
    assert load_weights_into(fresh, path, "CheckpointConfig.weights") == iteration
    assert _same(fresh, network)
    assert _same(get_network("tiny_16k", checkpoint=path), network)


def _error(path: Path, name: str = "tiny_16k") -> str:
    with pytest.raises(NetworkFileError) as error:
        load_network(name, path, SETTING)
    assert str(error.value).startswith(f"{SETTING}={path}: ")
    return str(error.value)


def test_files_without_a_usable_network_name_the_setting(network, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    assert "unreadable" in _error(junk)
    unsafe = tmp_path / "unsafe.pth"
    torch.save(argparse.Namespace(weights=1), unsafe)  # loads only with weights_only=False
    text = _error(unsafe)
    assert "loads safely (weights-only)" in text and "weights_only=False" not in text
    other = tmp_path / "other.pth"
    io.save_torch({"model": network.state_dict(), "step": 1}, other)
    assert "holds no network weights (a dict of model, step)" in _error(other)
    for keys in ({"iteration": 1, "network": {"a": 1}}, [torch.zeros(1)]):
        io.save_torch(keys, other)
        assert "holds no network weights" in _error(other)

    variant = tmp_path / "tiny_44k.pth"
    io.save_torch(_trained("tiny_44k").state_dict(), variant)
    assert "do not fit this network" in _error(variant)
    with pytest.raises(NetworkFileError, match="do not fit this network"):
        load_weights_into(get_network("tiny_16k"), variant, SETTING)

    nan = tmp_path / "nan.pth"
    state = network.state_dict()
    io.save_torch({**state, "latent_std": torch.full_like(state["latent_std"], float("nan"))}, nan)
    assert "non-finite values in latent_std" in _error(nan)


def test_a_missing_file_names_the_setting_and_the_weights_dir(tmp_path, monkeypatch):
    configured = tmp_path / "configured"
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(configured))
    with pytest.raises(FileNotFoundError) as missing:
        load_network("tiny_16k", "nothing.pth", "get_network.checkpoint")
    text = str(missing.value)
    assert text.startswith("get_network.checkpoint=nothing.pth does not exist")
    assert str(configured / "nothing.pth") in text and f"${weights.WEIGHTS_DIR_ENV}" in text
