"""The recipe weights equal the published check values (rule counts, sums, first values)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmgin.testing.recipe import MANIFEST_DIR, read_manifest, recipe_rule, recipe_tensor

CHECKS = json.loads((Path(__file__).resolve().parent / "fixtures" / "recipe_checks.json").read_text())
RULE_NAMES = {"default: 0.02 n": "default", "norm weight: 1 + 0.02 n": "norm",
              "std: 1 + 0.02 n": "std", "weight_g: 0.8 + 0.02 n": "weight_g",
              "filter (constructor value)": "filter"}


@pytest.mark.parametrize("component", ["mmaudio_small_16k", "bigvgan_16k"])
def test_recipe_matches_published_checks(component):
    check = CHECKS["components"][component]
    entries = read_manifest(MANIFEST_DIR / check["manifest"])
    assert len(entries) == check["num_tensors"]
    counts = Counter(recipe_rule(e.key) for e in entries)
    expected_counts = {RULE_NAMES[k]: v for k, v in check["rule_counts"].items()}
    assert dict(counts) == expected_counts
    total = total_sq = 0.0
    for entry in entries:
        if recipe_rule(entry.key) == "filter":
            continue
        value = recipe_tensor(entry.key, entry.shape).double()
        total += value.sum().item()
        total_sq += value.square().sum().item()
    assert total == pytest.approx(check["sum_recipe_values"], rel=1e-12, abs=1e-9)
    assert total_sq == pytest.approx(check["sum_sq_recipe_values"], rel=1e-12)
    for rule, example in check["examples"].items():
        shape = next(e.shape for e in entries if e.key == example["key"])
        first4 = recipe_tensor(example["key"], shape).flatten()[:4]
        assert first4.tolist() == example["first4"], rule


def test_filter_keys_are_not_randomised():
    with pytest.raises(ValueError, match="filter"):
        recipe_tensor("resblocks.0.activations.0.act.downsample.lowpass.filter", (1, 1, 12))
    assert torch.equal(recipe_tensor("a.weight", (3,)), recipe_tensor("a.weight", (3,)))
