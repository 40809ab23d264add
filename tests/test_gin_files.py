"""Every .gin file under gin/ and experiments/ parses; every runnable one builds (dry run).

A runnable file (one that binds `launch.program`, or an experiments/ file including one that
does) names the tiny bindings that make it build on a CPU in seconds in header lines
`# dry-run-with: --gin_file=...` / `# dry-run-with: --gin_param=...`. `{tmp}` becomes a fresh
temporary folder and `{example}` the example workspace (example media and stores made with tiny
encoders). Building through the launcher also refuses macros that are set but never used.
"""

from __future__ import annotations

import re
from pathlib import Path

import gin
import pytest
import torch

from mmgin import cli, dist, io
from mmgin.model import get_network

REPO = Path(__file__).resolve().parents[1]
GIN_FILES = sorted(
    p.relative_to(REPO).as_posix()
    for folder in ("gin", "experiments")
    for p in (REPO / folder).rglob("*.gin")
)
DRY_RUN_LINE = re.compile(r"^#\s*dry-run-with:\s*(--gin_file|--gin_param)=(.*)$")


def is_runnable(text: str) -> bool:
    binds_program = re.search(r"^\s*launch\.program\s*=", text, re.MULTILINE) is not None
    return binds_program or any(DRY_RUN_LINE.match(line.strip()) for line in text.splitlines())


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


def test_evaluate_record_holds_the_codec_and_encoders_it_built(example_workspace, tmp_path):
    """Evaluate builds its network, codec and encoders while it runs: its own record (without
    the launcher's last write) ends equal to everything gin saw used."""
    weights = tmp_path / "tiny_16k.pth"
    network = get_network("tiny_16k", latent_mean=torch.zeros(20), latent_std=torch.full((20,), 0.5),
                          empty_string_feat=torch.zeros(77, 1024))
    io.save_torch(network.state_dict(), weights)
    out = tmp_path / "eval"
    cli.parse(["gin/evaluate_16k.gin", "gin/audio/tiny.gin", "gin/test/tiny_encoders.gin"],
              ["NETWORK = 'tiny_16k'", f"WEIGHTS = '{weights}'", f"OUTPUT_DIR = '{out}'",
               f"VIDEO_DIR = '{example_workspace / 'videos'}'", "Evaluate.limit = 1",
               "Evaluate.duration = 2.0", "Evaluate.write_videos = False", "FlowMatching.num_steps = 1"],
              [str(REPO)])
    with dist.session("cpu"):
        cli.build().run()
    record = (out / "operative_config.gin").read_text()
    assert record == gin.operative_config_str()
    for binding in ("AudioCodec.mode = '16k'", "get_clip.", "get_synchformer.", "MMAudio."):
        assert binding in record, binding
