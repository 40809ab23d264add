"""Deterministic stand-in weights for the released checkpoints.

The released files cannot be shipped with the project, so tests and benchmarks use the
"recipe" weights defined in the reference manifests README: every tensor is drawn from its
own CPU generator seeded with the crc32 of its key.  Because each key has its own generator,
the values do not depend on iteration order and match the public fixtures exactly.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

# Shipped as package data (pyproject.toml), so a wheel install has them too.
MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"


@dataclass(frozen=True)
class ManifestEntry:
    """One tensor of a released checkpoint: its key, shape and dtype."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_manifest(path_or_name: str | Path) -> list[ManifestEntry]:
    """Reads a manifest TSV (``key<TAB>shape<TAB>dtype``), by path or by bare name."""
    path = Path(path_or_name)
    if not path.suffix:
        path = MANIFEST_DIR / f"{path_or_name}.tsv"
    entries = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            shape = tuple(int(s) for s in row["shape"].split("x")) if row["shape"] else ()
            entries.append(ManifestEntry(row["key"], shape, getattr(torch, row["dtype"])))
    return entries


def recipe_rule(key: str) -> str:
    """Names the recipe rule of ``key``: 'filter', 'norm', 'std', 'weight_g' or 'default'."""
    parts = key.split(".")
    last = parts[-1]
    if last == "filter":
        return "filter"
    if last == "weight" and len(parts) > 1 and ("norm" in parts[-2] or parts[-2].startswith("ln_")):
        return "norm"
    if "std" in last:
        return "std"
    if last == "weight_g":
        return "weight_g"
    return "default"


_OFFSETS = {"norm": 1.0, "std": 1.0, "weight_g": 0.8, "default": 0.0}


def recipe_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The recipe value of one non-filter key: offset + 0.02 * randn(seed=crc32(key))."""
    rule = recipe_rule(key)
    if rule == "filter":
        raise ValueError(f"{key!r} is a fixed filter buffer; take its value from the module")
    generator = torch.Generator(device="cpu").manual_seed(zlib.crc32(key.encode("utf-8")))
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.mul_(0.02).add_(_OFFSETS[rule])  # in place: CLIP alone is 4 GB of values


def recipe_state_dict(
    manifest: str | Path | list[ManifestEntry],
    fixed: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Builds the full recipe state dict of a manifest, in manifest order.

    ``fixed`` supplies the constructor values of '.filter' buffers (the alias-free low-pass
    filters), which the recipe keeps rather than randomises.
    """
    entries = manifest if isinstance(manifest, list) else read_manifest(manifest)
    state = {}
    for entry in entries:
        if recipe_rule(entry.key) == "filter":
            if fixed is None or entry.key not in fixed:
                raise KeyError(f"recipe needs the constructor value of filter buffer {entry.key!r}")
            state[entry.key] = fixed[entry.key].detach().clone().to(entry.dtype)
        else:
            state[entry.key] = recipe_tensor(entry.key, entry.shape).to(entry.dtype)
    return state
