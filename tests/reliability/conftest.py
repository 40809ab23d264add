"""Fixtures of the reliability suite: reference runs shared by the fault scenarios, and the tally
of trials behind tests/reliability/README.md.

Set MMGIN_RELIABILITY_REPORT=<file.json> to write the tally of every scenario after the run,
and MMGIN_RELIABILITY_CPU_REPORT=<file.json> for the CPU seconds of each test (with children).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mmgin.data import tsv as tsv_io

from .harness import (
    EXTRACTION_FILES,
    STEPS,
    TRAIN_FILES,
    ExtractionInputs,
    extraction_params,
    run_forked,
    run_in_process,
    run_outputs,
    store_files,
    train_params,
)
from .media import Sound, write_audio_only

_CPU_KEY = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def uninterrupted(example_workspace, tmp_path_factory) -> tuple[dict, float]:
    """The outputs of the tiny training run without interruption, and its wall time."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    seconds = run_forked(functools.partial(run_in_process, TRAIN_FILES, train_params(example_workspace, out)))
    outputs = run_outputs(out)
    assert outputs["checkpoint"]["iteration"] == STEPS
    return outputs, seconds


@pytest.fixture(scope="session")
def extraction_inputs(example_workspace, tmp_path_factory) -> ExtractionInputs:
    """10 clips (one of a silent file, so the failure report is part of the store) with 3
    captions; the files of the store an uninterrupted run writes, and its wall time."""
    root = tmp_path_factory.mktemp("extraction_inputs")
    audios = root / "audios"
    shutil.copytree(example_workspace / "audios", audios)
    write_audio_only(audios / "silent.flac", 9.0, Sound(44100, 1, "flac", silent=True))
    clips = tsv_io.read_table(example_workspace / "clips.tsv")
    rows = [dict(c, id=f"{c['id']}_{k}") for k in range(2) for c in clips]
    rows.insert(3, {"id": "silent_0", "name": "silent", "start_sample": "0", "end_sample": "357210"})
    rows.append(dict(clips[0], id="last_0"))
    tsv_io.write_table(root / "clips.tsv", ["id", "name", "start_sample", "end_sample"], rows)
    captions = tsv_io.read_table(example_workspace / "captions.tsv")
    captions.append({"id": "silent", "caption": "nothing at all"})
    tsv_io.write_table(root / "captions.tsv", ["id", "caption"], captions)
    store = root / "stores" / "clean"
    seconds = run_forked(functools.partial(run_in_process, EXTRACTION_FILES, extraction_params(root, audios, store)))
    return ExtractionInputs(root, audios, store_files(store), seconds)


class Tally:
    """Scenario -> trials, survived, data lost (and where the faults landed), for the README."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = defaultdict(
            lambda: {"trials": 0, "survived": 0, "data_lost": 0, "landed": Counter()})

    def add(self, scenario: str, survived: bool, data_lost: int = 0, landed: str | None = None) -> None:
        row = self.rows[scenario]
        row["trials"] += 1
        row["survived"] += int(survived)
        row["data_lost"] += data_lost
        if landed:
            row["landed"][landed] += 1


@pytest.fixture(scope="session")
def tally() -> Tally:
    record = Tally()
    yield record
    target = os.environ.get("MMGIN_RELIABILITY_REPORT")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(record.rows.items())), indent=1) + "\n")


@pytest.fixture
def scenario(request, tally):
    """Counts a single-trial test as one trial of its scenario: survived when it passed."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None:
        tally.add(request.node.originalname.removeprefix("test_").replace("_", " "), report.passed)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (forked runs, torchrun)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Records each test's CPU seconds (setup, call, teardown) for the README's budget table."""
    start = _cpu_seconds()
    result = yield
    item.config.stash.setdefault(_CPU_KEY, {})[item.nodeid] = round(_cpu_seconds() - start, 1)
    return result


def pytest_sessionfinish(session):
    target = os.environ.get("MMGIN_RELIABILITY_CPU_REPORT")
    if target:
        Path(target).write_text(json.dumps(session.config.stash.get(_CPU_KEY, {}), indent=1) + "\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
