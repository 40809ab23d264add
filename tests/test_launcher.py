"""The launcher: file order, overrides, search path, dry run and config errors, end to end."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import gin
import pytest

from mmgin import cli, run_lock

REPO = Path(__file__).resolve().parents[1]


def launch(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bound_output_dir() -> str:
    return gin.query_parameter("CheckDistributed.output_dir")


def test_later_files_override_earlier_and_params_win(tmp_path):
    first = write(tmp_path / "a.gin", "include 'gin/check_distributed.gin'\nOUTPUT_DIR = 'first'\n")
    second = write(tmp_path / "b.gin", "OUTPUT_DIR = 'second'\n")
    cli.parse([str(first), str(second)], [], [str(REPO)])
    assert gin.query_parameter("%OUTPUT_DIR") == "second"
    cli.parse([str(second), str(first)], [], [str(REPO)])
    assert gin.query_parameter("%OUTPUT_DIR") == "first"
    cli.parse([str(first), str(second)], ["OUTPUT_DIR = 'param'"], [str(REPO)])
    assert gin.query_parameter("%OUTPUT_DIR") == "param"
    assert "CheckDistributed.output_dir = %OUTPUT_DIR" in cli.config_record.current().text()


def test_gin_file_found_along_search_path(tmp_path):
    library = tmp_path / "library"
    write(library / "fragments" / "out.gin", "OUTPUT_DIR = 'from_search_path'\n")
    write(library / "run.gin", "include 'gin/check_distributed.gin'\ninclude 'fragments/out.gin'\n")
    cli.parse(["run.gin"], [], [str(library), str(REPO)])
    assert gin.query_parameter("%OUTPUT_DIR") == "from_search_path"
    with pytest.raises(cli.ConfigError, match="not found"):
        cli.parse(["run.gin"], [], [str(REPO)])


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: contents, inode and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_ino,
                                       p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_dry_run_prints_operative_config_and_writes_nothing_into_a_run(tmp_path):
    """Issue 17 §4: a dry run beside an existing run left its config files rewritten."""
    out = tmp_path / "out"
    assert cli.run(["gin/test/check_distributed.gin"], [f"OUTPUT_DIR='{out}'"], [str(REPO)], dry_run=False) == 0
    before = snapshot(tmp_path)
    result = launch("--gin_file=gin/test/check_distributed.gin", f"--gin_param=OUTPUT_DIR='{out}'",
                    "--gin_param=launch.device='cpu'", "--dry_run")
    assert result.returncode == 0, result.stderr
    assert "launch.program = @CheckDistributed()" in result.stdout
    assert f"OUTPUT_DIR = '{out}'" in result.stdout and "launch.device = 'cpu'" in result.stdout
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("files, params", [
    (["gin/test/check_distributed.gin"], ["OUTPUT_DIR = '{tmp}/run'"]),
    (["gin/extract_audio_16k.gin", "gin/test/tiny_encoders.gin"],
     ["AUDIO_DIR = '{tmp}/audios'", "CAPTIONS_TSV = '{tmp}/captions.tsv'", "CLIPS_TSV = '{tmp}/clips.tsv'",
      "OUTPUT_DIR = '{tmp}/stores/audio'"]),
    (["gin/partition_clips.gin"], ["AUDIO_DIR = '{tmp}/audios'", "OUTPUT_DIR = '{tmp}/clips.tsv'"]),
    (["gin/example.gin"], ["OUTPUT_DIR = '{tmp}/example'"]),
], ids=["check_distributed", "extraction", "partition_clips", "pipeline"])
def test_dry_run_creates_nothing(tmp_path, files, params):
    """No output directory, work directory, lock or config file appears for a new path."""
    assert cli.run(files, [p.format(tmp=tmp_path) for p in params], [str(REPO)], dry_run=True) == 0
    assert list(tmp_path.iterdir()) == []


def test_run_writes_configs_and_result(tmp_path):
    out = tmp_path / "out"
    result = launch("--gin_file=gin/test/check_distributed.gin", f"--gin_param=OUTPUT_DIR='{out}'")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "check_distributed.json").read_text())
    assert report["world_size"] == 1 and report["ranks"][0]["sum"] == 1.0
    parsed = (out / "config.gin").read_text()
    assert "gin/test/check_distributed.gin" in parsed and f"OUTPUT_DIR='{out}'" in parsed
    assert "CheckDistributed.output_dir = %OUTPUT_DIR" in (out / "operative_config.gin").read_text()


def test_misspelt_binding_names_file_and_line(tmp_path):
    bad = write(tmp_path / "typo.gin",
                "include 'gin/check_distributed.gin'\nOUTPUT_DIR = 'x'\nCheckDistributed.outptu_dir = 'y'\n")
    result = launch(f"--gin_file={bad}")
    assert result.returncode == 2
    assert str(bad) in result.stderr and "line 3" in result.stderr and "outptu_dir" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("launch.program = @CheckDistributd()\n", "CheckDistributd"),
        ("include 'gin/nothere.gin'\n", "nothere.gin"),
        ("OUTPUT_DIR = \n", "line 1"),
    ],
    ids=["unknown-configurable", "missing-include", "syntax"],
)
def test_config_mistakes_are_short_errors(tmp_path, text, expected):
    bad = write(tmp_path / "bad.gin", text)
    with pytest.raises(cli.ConfigError, match=expected) as error:
        cli.parse([str(bad)], [], [str(REPO)])
    assert str(bad) in str(error.value)


def test_misspelt_param_names_the_param():
    with pytest.raises(cli.ConfigError, match=r"--gin_param=.CheckDistributed\.ouput_dir"):
        cli.parse(["gin/check_distributed.gin"], ["CheckDistributed.ouput_dir = 'x'"], [str(REPO)])


def test_required_values_are_all_listed(tmp_path):
    gin_file = write(tmp_path / "two.gin", "A_PATH = %gin.REQUIRED\nB_PATH = %gin.REQUIRED\n"
                     "join_path.root = %A_PATH\njoin_path.parts = [%B_PATH]\n"
                     "include 'gin/check_distributed.gin'\n")
    result = launch(f"--gin_file={gin_file}")
    assert result.returncode == 2
    for name in ("A_PATH", "B_PATH", "OUTPUT_DIR"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_gin_file_is_a_clear_error():
    result = launch("--gin_file=gin/does_not_exist.gin")
    assert result.returncode == 2 and "does_not_exist.gin not found" in result.stderr


def test_required_constructor_argument_is_a_config_error():
    cli.parse([], ["launch.program = @CheckDistributed()"], [str(REPO)])
    with pytest.raises(cli.ConfigError, match="output_dir"):
        cli.build()


def test_misspelt_macro_param_is_refused_with_the_nearest_name(tmp_path):
    result = launch("--gin_file=gin/test/check_distributed.gin", f"--gin_param=OUTPUT_DIR='{tmp_path}'",
                    "--gin_param=OUTPUT_DRI='elsewhere'")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("mmgin: config error: macro OUTPUT_DRI is set but never used (set in "
            "--gin_param=\"OUTPUT_DRI='elsewhere'\"); did you mean OUTPUT_DIR?") in result.stderr
    assert not any(tmp_path.iterdir())


def test_misspelt_evaluate_macro_is_refused_before_required_values():
    with pytest.raises(cli.ConfigError, match=r"macro GT_CAHCE is set but never used .*did you mean GT_CACHE\?"):
        cli.parse(["gin/evaluate_16k.gin"], ["GT_CAHCE = 'cache'"], [str(REPO)])


@pytest.mark.parametrize(
    "line, hint",
    [("OUTPTU_DIR = 'y'", "did you mean OUTPUT_DIR?"), ("SEED = 3", "nothing refers to %SEED; remove it")],
    ids=["misspelt", "unrelated"],
)
def test_unused_macro_in_a_file_names_file_and_line(tmp_path, line, hint):
    bad = write(tmp_path / "typo.gin", f"include 'gin/check_distributed.gin'\nOUTPUT_DIR = 'x'\n{line}\n")
    name = line.split()[0]
    with pytest.raises(cli.ConfigError) as error:
        cli.parse([str(bad)], [], [str(REPO)])
    assert str(error.value) == f"macro {name} is set but never used (set in {bad}:3); {hint}"


def test_macros_used_only_by_other_macros_are_used(tmp_path):
    """`%NAME` counts wherever it is: in another macro, nested in lists, dicts and tuples."""
    chained = write(tmp_path / "chained.gin", "include 'gin/check_distributed.gin'\n"
                    "ROOT = 'out'\nOUTPUT_DIR = %ROOT\nPART = 'a'\nPARTS = [{'key': (%PART,)}]\n"
                    "join_path.parts = %PARTS\n")
    cli.parse([str(chained)], [], [str(REPO)])
    assert str(gin.query_parameter("%OUTPUT_DIR")) == "%ROOT"


# ---------------------------------------------------------------- one lock per output (§11)
HOLD_LOCK = """
import json, sys, time
from mmgin import run_lock
lock = run_lock.acquire(sys.argv[1])
if len(sys.argv) > 2:  # pretend to run on another host (the lock is shared over NFS)
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "host": sys.argv[2]}))
print("held", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def lock_held_elsewhere(output: Path, *host: str) -> Iterator[subprocess.Popen]:
    """Another process holding ``output``'s lock; SIGKILLed at the end (its lock file stays)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(output), *host], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def in_use_by(output: Path, holder: subprocess.Popen) -> str:
    return f"{output} is in use by another run: pid {holder.pid} on host {socket.gethostname()} (since "


def test_a_second_run_stops_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    """Issue 17 §11: two runs in one directory used to corrupt each other."""
    out = tmp_path / "out"
    args = ("--gin_file=gin/test/check_distributed.gin", f"--gin_param=OUTPUT_DIR='{out}'")
    with lock_held_elsewhere(out) as holder:
        refused = launch(*args)
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr.startswith(f"mmgin: {in_use_by(out, holder)}")
        assert len(refused.stderr.splitlines()) == 1 and not out.exists()
    lock = out.parent / ".out.lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid  # left by a process that is gone
    taken = launch(*args)
    assert taken.returncode == 0, taken.stderr
    assert f"took over {lock} from pid {holder.pid}" in taken.stderr
    assert (out / "check_distributed.json").is_file() and not lock.exists()


def test_a_holder_on_another_host_is_said_to_be_unverifiable_from_here(tmp_path):
    out = tmp_path / "out"
    with lock_held_elsewhere(out, "gpu-7") as holder:
        with pytest.raises(run_lock.OutputLockedError) as error:
            run_lock.acquire(out)
    assert str(error.value).startswith(f"{out} is in use by another run: pid {holder.pid} on host gpu-7 (since ")
    assert "That host is not this one: check there whether the run is still going." in str(error.value)


def test_under_torchrun_every_rank_stops_on_a_held_lock(tmp_path):
    """Rank 0 tries the lock and tells the others: no rank waits for a rank that stopped."""
    out = tmp_path / "out"
    with lock_held_elsewhere(out) as holder:
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(REPO / "launch.py"), "--gin_file=gin/test/check_distributed.gin", f"--gin_param=OUTPUT_DIR='{out}'"],
            cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert result.returncode != 0
    for rank in (0, 1):
        assert f"mmgin: rank {rank}: {in_use_by(out, holder)}" in result.stderr, result.stderr[-3000:]
    assert not out.exists()


# --------------------------------------------------------------------- short errors (§12)
def test_a_missing_store_is_one_line_and_the_traceback_is_behind_a_flag(tmp_path):
    """Issue 17 §12: runtime errors were tracebacks of dozens of lines with the message buried."""
    store = tmp_path / "no_store"
    args = ("--gin_file=gin/small_16k.gin", "--gin_file=gin/test/tiny_train.gin",
            f"--gin_param=VIDEO_STORES=['{store}']", "--gin_param=AUDIO_STORES=[]",
            "--gin_param=VAL_STORE=None", f"--gin_param=OUTPUT_DIR='{tmp_path / 'run'}'")
    short = launch(*args)
    assert short.returncode == 1
    assert short.stderr == (f"mmgin: feature store {store} not found (no meta.json). Check the path, or run "
                            "the extraction program first. (in training_mixture > ExtractedVideoDataset)\n")
    full = launch(*args, "--traceback")
    assert full.returncode == 1 and full.stderr.startswith("Traceback (most recent call last):")
    assert full.stderr.splitlines()[-1] == short.stderr.rstrip("\n")
    assert not (tmp_path / "run").exists()


def test_a_missing_weights_file_is_a_short_error_naming_it(tmp_path):
    captions = write(tmp_path / "captions.csv", "name,caption\nclip,a dog barks\n")
    weights = tmp_path / "absent.pth"
    result = launch("--gin_file=gin/evaluate_16k.gin", "--gin_file=gin/audio/tiny.gin",
                    "--gin_file=gin/test/tiny_encoders.gin", "--gin_param=NETWORK='tiny_16k'",
                    f"--gin_param=WEIGHTS='{weights}'", f"--gin_param=CAPTIONS_CSV='{captions}'",
                    f"--gin_param=OUTPUT_DIR='{tmp_path / 'eval'}'")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"mmgin: Evaluate.weights={weights} does not exist")
    assert len(result.stderr.splitlines()) <= 4


def test_an_include_loop_is_a_short_error_showing_the_loop(tmp_path):
    a, b = tmp_path / "a.gin", tmp_path / "b.gin"
    write(a, f"include '{b}'\n")
    write(b, f"include 'gin/check_distributed.gin'\ninclude '{a}'\n")
    result = launch(f"--gin_file={a}")
    assert result.returncode == 2
    assert result.stderr == f"mmgin: config error: include loop: {a} -> {b} -> {a}; remove one of these includes\n"


# ------------------------------------------------------------- dynamic registration (§14)
def dynamic_config(tmp_path: Path, evidence: Path) -> Path:
    """A gin file that, once built, creates ``evidence``: it calls os.makedirs."""
    return write(tmp_path / "dynamic.gin", "from __gin__ import dynamic_registration\nimport os\n"
                 "import mmgin.cli\nmmgin.cli.launch.program = @os.makedirs()\n"
                 f"os.makedirs.name = '{evidence}'\n")


def test_dry_run_refuses_dynamic_registration(tmp_path):
    """Issue 17 §14: a gin file is code, and --dry_run used to run it."""
    evidence = tmp_path / "evidence"
    config = dynamic_config(tmp_path, evidence)
    with pytest.raises(cli.ConfigError, match=rf"^{config}:1 enables `from __gin__ import dynamic_registration`"):
        cli.run([str(config)], [], [str(REPO)], dry_run=True)
    with pytest.raises(cli.ConfigError, match="^a --gin_param enables"):
        cli.run(["gin/test/check_distributed.gin"], ["from __gin__ import dynamic_registration",
                                                     f"OUTPUT_DIR = '{tmp_path}'"], [str(REPO)], dry_run=True)
    assert not evidence.exists()


def test_dry_run_of_dynamic_registration_runs_its_code_when_allowed(tmp_path):
    evidence = tmp_path / "evidence"
    result = launch(f"--gin_file={dynamic_config(tmp_path, evidence)}", "--dry_run", "--allow_dynamic_registration")
    assert result.returncode == 0, result.stderr
    assert "mmgin.cli.launch.program = @os.makedirs()" in result.stdout and evidence.is_dir()
