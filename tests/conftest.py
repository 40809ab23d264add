"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import gin
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def fresh_gin_config():
    """Each test starts and ends with an empty gin config: bindings parsed by one test (e.g. a
    checkpoint path) must never leak into the next test's get_network()."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def example_workspace(tmp_path_factory) -> Path:
    """Example media and their extracted stores (tiny encoders), built once per test session.

    Layout: see mmgin.testing.example.build_example_workspace.
    """
    from mmgin.testing.example import build_example_workspace

    return build_example_workspace(tmp_path_factory.mktemp("example_workspace"))
