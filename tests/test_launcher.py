"""The launcher: file order, overrides, search path, dry run and config errors, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from mmgin import cli

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


def test_dry_run_prints_operative_config_and_does_not_run(tmp_path):
    out = tmp_path / "out"
    result = launch("--gin_file=gin/test/check_distributed.gin", f"--gin_param=OUTPUT_DIR='{out}'",
                    "--dry_run")
    assert result.returncode == 0, result.stderr
    assert "launch.program = @CheckDistributed()" in result.stdout
    assert f"OUTPUT_DIR = '{out}'" in result.stdout
    assert (out / "config.gin").is_file() and (out / "operative_config.gin").is_file()
    assert not (out / "check_distributed.json").exists()


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
