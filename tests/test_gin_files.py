"""Every .gin file under gin/ and experiments/ parses; every runnable one builds (dry run).

A runnable file (one that binds `launch.program`) names the tiny bindings that make it build on
a CPU in seconds in header lines `# dry-run-with: --gin_file=...` / `# dry-run-with:
--gin_param=...`. `{tmp}` becomes a fresh temporary folder and `{example}` the example workspace
(example media and stores made with tiny encoders).
"""

from __future__ import annotations

import re
from pathlib import Path

import gin
import pytest

from mmgin import cli

REPO = Path(__file__).resolve().parents[1]
GIN_FILES = sorted(
    p.relative_to(REPO).as_posix()
    for folder in ("gin", "experiments")
    for p in (REPO / folder).rglob("*.gin")
)
DRY_RUN_LINE = re.compile(r"^#\s*dry-run-with:\s*(--gin_file|--gin_param)=(.*)$")


def is_runnable(text: str) -> bool:
    return re.search(r"^\s*launch\.program\s*=", text, re.MULTILINE) is not None


def dry_run_args(text: str) -> tuple[list[str], list[str]]:
    files, params = [], []
    for line in text.splitlines():
        match = DRY_RUN_LINE.match(line.strip())
        if match:
            (files if match.group(1) == "--gin_file" else params).append(match.group(2).strip())
    return files, params


def test_there_are_gin_files():
    assert "gin/check_distributed.gin" in GIN_FILES


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_parses_and_builds(name, tmp_path, request):
    text = (REPO / name).read_text()
    if not is_runnable(text):
        import mmgin.programs  # noqa: F401  (register every configurable)

        gin.clear_config()
        gin.add_config_file_search_path(str(REPO))
        gin.parse_config_file(str(REPO / name))
        gin.clear_config()
        return
    files, params = dry_run_args(text)
    needs_example = "{example}" in "\n".join(files + params)
    example = request.getfixturevalue("example_workspace") if needs_example else None

    def fill(value: str) -> str:
        return value.replace("{tmp}", str(tmp_path)).replace("{example}", str(example))

    code = cli.run([name, *map(fill, files)], [fill(p) for p in params], [str(REPO)], dry_run=True)
    assert code == 0
