"""Sharded and interrupted extraction give the same store as one uninterrupted process.

Uses the audio-text program (the shared extraction machinery without video decoding, so it
stays fast) on 12 clips cut from the example's flacs, one clip per block. The killed run is a
real process killed with SIGKILL; it is resumed in this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmgin import cli
from mmgin.data import tsv as tsv_io

REPO = Path(__file__).resolve().parents[1]
TINY = "gin/test/tiny_encoders.gin"


def _params(workspace: Path, inputs: Path, store: Path) -> list[str]:
    return [
        f"AUDIO_DIR = '{workspace / 'audios'}'", f"CAPTIONS_TSV = '{inputs / 'captions.tsv'}'",
        f"CLIPS_TSV = '{inputs / 'clips.tsv'}'", f"OUTPUT_DIR = '{store}'",
        "ExtractAudioFeatures.batch_size = 1", "ExtractAudioFeatures.num_workers = 1",
        "launch.device = 'cpu'",
    ]


def _launch_command(params: list[str], nproc: int = 1) -> list[str]:
    args = ["--gin_file=gin/extract_audio_16k.gin", f"--gin_file={TINY}"] + [f"--gin_param={p}" for p in params]
    if nproc == 1:
        return [sys.executable, "launch.py", *args]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [torchrun, "--standalone", f"--nproc_per_node={nproc}", "launch.py", *args]


def _store_bytes(store: Path) -> dict[str, bytes]:
    """Every file of a store and its tables (the config records name the run's paths)."""
    files = {p.name: p.read_bytes() for p in store.iterdir() if not p.name.endswith(".gin")}
    for suffix in (".tsv", ".failures.tsv"):
        files[suffix] = (store.parent / f"{store.name}{suffix}").read_bytes()
    return files


@pytest.fixture(scope="module")
def clip_inputs(example_workspace, tmp_path_factory):
    """12 clips (3 per example clip, distinct ids), captions with a stale duplicate row, and
    clips of a file without a caption; plus the store of one uninterrupted process."""
    root = tmp_path_factory.mktemp("clip_inputs")
    clips = tsv_io.read_table(example_workspace / "clips.tsv")
    rows = [dict(c, id=f"{c['id']}_copy{k}") for k in range(3) for c in clips]
    rows += [{"id": "orphan_0", "name": "orphan", "start_sample": "0", "end_sample": "357210"}]
    tsv_io.write_table(root / "clips.tsv", ["id", "name", "start_sample", "end_sample"], rows)
    captions = tsv_io.read_table(example_workspace / "captions.tsv")
    stale = [{"id": captions[0]["id"], "caption": "an outdated caption"}]
    tsv_io.write_table(root / "captions.tsv", ["id", "caption"], stale + captions)
    store = root / "one-process"
    cli.run(["gin/extract_audio_16k.gin", TINY], _params(example_workspace, root, store), [str(REPO)], dry_run=False)
    return root, store, captions


def test_captions_last_duplicate_wins_and_uncaptioned_clips_are_reported(clip_inputs):
    root, store, captions = clip_inputs
    table = tsv_io.read_table(root / "one-process.tsv")
    assert len(table) == 12
    latest = {c["id"]: c["caption"] for c in captions}
    assert all(row["caption"] == latest[row["id"].split("_copy")[0].rsplit("_", 1)[0]] for row in table)
    assert "an outdated caption" not in {row["caption"] for row in table}
    failures = tsv_io.read_table(root / "one-process.failures.tsv")
    assert [(r["id"], r["reason"]) for r in failures] == [("orphan_0", "no_caption")]


def test_rerun_on_a_finished_store_changes_nothing(example_workspace, clip_inputs):
    root, store, _ = clip_inputs
    before = _store_bytes(store)
    cli.run(["gin/extract_audio_16k.gin", TINY], _params(example_workspace, root, store), [str(REPO)], dry_run=False)
    assert _store_bytes(store) == before
    assert not (root / "one-process.partial").exists()


def test_two_processes_write_the_same_store(example_workspace, clip_inputs, tmp_path):
    root, reference, _ = clip_inputs
    store = tmp_path / "two-processes"
    result = subprocess.run(
        _launch_command(_params(example_workspace, root, store), nproc=2),
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _store_bytes(store) == _store_bytes(reference)


def test_killed_run_resumes_to_the_same_store(example_workspace, clip_inputs, tmp_path, caplog):
    root, reference, _ = clip_inputs
    store = tmp_path / "killed"
    command = _launch_command(_params(example_workspace, root, store))
    progress = tmp_path / "killed.partial" / "progress.rows"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(FileNotFoundError):  # gone if the run finalised meanwhile
                if progress.read_bytes().count(1) >= 1:
                    break
            time.sleep(0.01)
        assert process.poll() is None, "the extraction ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    done = progress.read_bytes()
    assert 1 <= done.count(1) < len(done), "the kill did not land in the middle of the run"
    assert not store.exists()

    caplog.set_level("INFO")
    cli.run(["gin/extract_audio_16k.gin", TINY], _params(example_workspace, root, store), [str(REPO)], dry_run=False)
    assert "resuming the unfinished extraction" in caplog.text
    assert _store_bytes(store) == _store_bytes(reference)
