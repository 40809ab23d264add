"""Every .gin file under gin/ and experiments/ parses; every runnable one builds (dry run).

A runnable file is one that binds `launch.program` (itself or through its includes). Each has an
entry in DRY_RUNS: the extra gin files and `--gin_param`s that make it build on a CPU in seconds
(tiny encoders, tiny network, example data). In those, `{tmp}` becomes a fresh temporary folder
and `{example}` the example workspace (example media and stores made with tiny encoders). A
runnable file without an entry fails, so none is silently left unbuilt. Building through the
launcher also refuses macros that are set but never used.
"""

from __future__ import annotations

import re
from pathlib import Path

import gin
import pytest
import torch

from mmgin import cli, config_record, dist, io
from mmgin.model import get_network
from mmgin.programs.base import claimed

REPO = Path(__file__).resolve().parents[1]
GIN_FILES = sorted(
    p.relative_to(REPO).as_posix()
    for folder in ("gin", "experiments")
    for p in (REPO / folder).rglob("*.gin")
)

# Training configs on the example's 16 kHz stores, with the tiny network and codec.
TINY_TRAIN = ("gin/test/tiny_train.gin",)
EXAMPLE_STORES = (
    "VIDEO_STORES=['{example}/stores/video-16k']",
    "AUDIO_STORES=['{example}/stores/audio-16k']",
    "VAL_STORE='{example}/stores/video-16k'",
    "OUTPUT_DIR='{tmp}/out'",
)
TINY_EVALUATE = ("gin/audio/tiny.gin", "gin/test/tiny_encoders.gin")
EXTRACT_AUDIO = (
    "AUDIO_DIR='{tmp}/audios'",
    "CAPTIONS_TSV='{tmp}/captions.tsv'",
    "CLIPS_TSV='{tmp}/clips.tsv'",
)
EXTRACT_VIDEO = ("VIDEO_DIR='{tmp}/videos'", "VIDEO_TSV='{tmp}/video.tsv'")
# Runnable file -> the tiny network whose weights its dry run finds (and Evaluate loads) at
# {tmp}/weights.pth.
WEIGHTS = {"gin/evaluate_16k.gin": "tiny_16k", "gin/evaluate_44k.gin": "tiny_44k",
           "experiments/finetune_small_16k_video_only.gin": "tiny_16k"}

# Runnable file -> (extra gin files, --gin_params) for its dry run.
DRY_RUNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gin/check_distributed.gin": ((), ("OUTPUT_DIR='{tmp}/out'",)),
    "gin/test/check_distributed.gin": ((), ()),
    "gin/evaluate_16k.gin": (TINY_EVALUATE, (
        "NETWORK='tiny_16k'", "WEIGHTS='{tmp}/weights.pth'", "OUTPUT_DIR='{tmp}/out'",
        "STORE='{example}/stores/video-16k'", "SOURCE_VIDEOS='{example}/videos'")),
    "gin/evaluate_44k.gin": (TINY_EVALUATE, (
        "NETWORK='tiny_44k'", "WEIGHTS='{tmp}/weights.pth'", "OUTPUT_DIR='{tmp}/out'",
        "VIDEO_DIR='{example}/videos'")),
    "gin/example.gin": ((), ("OUTPUT_DIR='{tmp}/example'",)),
    "gin/export_weights.gin": (("gin/model/tiny_16k.gin",), (
        "CHECKPOINT='{tmp}/ckpt.pth'", "OUTPUT='{tmp}/out.pth'")),
    "gin/extract_audio_16k.gin": (("gin/test/tiny_encoders.gin",), (
        *EXTRACT_AUDIO, "OUTPUT_DIR='{tmp}/stores/audio-16k'")),
    "gin/extract_audio_44k.gin": (("gin/test/tiny_encoders.gin",), (
        *EXTRACT_AUDIO, "OUTPUT_DIR='{tmp}/stores/audio-44k'")),
    "gin/extract_video_16k.gin": (("gin/test/tiny_encoders.gin",), (
        *EXTRACT_VIDEO, "OUTPUT_DIR='{tmp}/stores/video-16k'")),
    "gin/extract_video_44k.gin": (("gin/test/tiny_encoders.gin",), (
        *EXTRACT_VIDEO, "OUTPUT_DIR='{tmp}/stores/video-44k'")),
    "gin/make_example_data.gin": ((), ("OUTPUT_DIR='{tmp}/example'",)),
    "gin/partition_clips.gin": ((), ("AUDIO_DIR='{example}/audios'", "OUTPUT_DIR='{tmp}/clips.tsv'")),
    "gin/record_null_text.gin": (("gin/vision/tiny.gin",), ("STORES=['{example}/stores/video-16k']",)),
    "gin/synthesize_ema.gin": ((), ("RUN_DIR='{tmp}/run'",)),
    "gin/small_16k.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "gin/small_44k.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "gin/medium_44k.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "gin/large_44k.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "gin/large_44k_v2.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "experiments/paper_small_16k_2gpu.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "experiments/paper_large_44k_8gpu.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "experiments/large_44k_v2_8gpu.gin": (TINY_TRAIN, EXAMPLE_STORES),
    "experiments/finetune_small_16k_video_only.gin": (TINY_TRAIN, (
        "WEIGHTS='{tmp}/weights.pth'", "VIDEO_STORES=['{example}/stores/video-16k']",
        "VAL_STORE='{example}/stores/video-16k'", "OUTPUT_DIR='{tmp}/out'")),
}


def binds_program(name: str) -> bool:
    """Parses one file alone (its includes too) and says whether it binds launch.program."""
    import mmgin.programs  # noqa: F401  (register every configurable)

    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    gin.parse_config_file(str(REPO / name))
    try:
        gin.query_parameter("launch.program")
    except ValueError:
        return False
    finally:
        gin.clear_config()
    return True


def test_there_are_gin_files():
    assert "gin/check_distributed.gin" in GIN_FILES


def test_every_dry_run_entry_names_a_gin_file():
    assert sorted(set(DRY_RUNS) - set(GIN_FILES)) == []


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_parses_and_builds(name, tmp_path, request):
    runnable = binds_program(name)
    if not runnable:
        assert name not in DRY_RUNS, f"{name} binds no launch.program: remove its DRY_RUNS entry"
        return
    assert name in DRY_RUNS, (
        f"{name} is runnable (binds launch.program) but has no entry in DRY_RUNS of "
        "tests/test_gin_files.py: add the tiny gin files and --gin_params that build it on a CPU")
    files, params = DRY_RUNS[name]
    needs_example = "{example}" in "\n".join(files + params)
    example = request.getfixturevalue("example_workspace") if needs_example else None

    def fill(value: str) -> str:
        return value.replace("{tmp}", str(tmp_path)).replace("{example}", str(example))

    if name in WEIGHTS:  # a dry run loads the network it would evaluate
        write_trained_weights(WEIGHTS[name], tmp_path / "weights.pth")
    code = cli.run([name, *map(fill, files)], [fill(p) for p in params], [str(REPO)], dry_run=True)
    assert code == 0


def write_trained_weights(name: str, path: Path) -> None:
    """A tiny network's weights with the statistics and null text that training would set."""
    network = get_network(name)
    with torch.no_grad():
        network.latent_mean.zero_()
        network.latent_std.fill_(0.5)
        network.empty_string_feat.zero_()
    io.save_torch(network.state_dict(), path)


BINDING = re.compile(r"^([A-Za-z_]\w*)\.\w+\s*=", re.MULTILINE)
MENTION = re.compile(r"(?<![\w./])([A-Za-z_]\w*)\.([a-z_]\w*)\b(?![./])")
FILE_SUFFIXES = {"py", "gin", "md", "pth", "pt", "json", "tsv", "csv"}  # launch.py is a file


def test_comments_name_only_settings_that_exist():
    """A header that names `Configurable.setting` (of a configurable the files bind) names a
    real one: renamed settings do not linger in the documentation."""
    import mmgin.programs  # noqa: F401  (register every configurable)

    texts = {name: (REPO / name).read_text() for name in GIN_FILES}
    bound = {m.group(1) for text in texts.values() for m in BINDING.finditer(text)}
    stale = []
    for name, text in texts.items():
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        for configurable, setting in MENTION.findall(comments):
            if configurable not in bound or setting in FILE_SUFFIXES:
                continue
            try:
                gin.parse_config(f"{configurable}.{setting} = None")
            except ValueError:
                stale.append(f"{name}: {configurable}.{setting}")
            finally:
                gin.clear_config()
    assert stale == []


def test_the_record_holds_what_the_program_built_and_what_its_run_called(example_workspace, tmp_path):
    """The launcher writes operative_config.gin once the program is built (Evaluate's network
    and codec are in it before anything runs) and again after the run (the encoders Evaluate
    builds on its first batch): the final record equals everything gin saw used."""
    write_trained_weights("tiny_16k", tmp_path / "tiny_16k.pth")
    out = tmp_path / "eval"
    cli.parse(["gin/evaluate_16k.gin", "gin/audio/tiny.gin", "gin/test/tiny_encoders.gin"],
              ["NETWORK = 'tiny_16k'", f"WEIGHTS = '{tmp_path / 'tiny_16k.pth'}'", f"OUTPUT_DIR = '{out}'",
               f"VIDEO_DIR = '{example_workspace / 'videos'}'", "Evaluate.limit = 1",
               "Evaluate.duration = 2.0", "Evaluate.write_videos = False", "FlowMatching.num_steps = 1"],
              [str(REPO)])
    with dist.session("cpu"):
        program = cli.build()
        with claimed(program):
            built = (out / config_record.OPERATIVE_CONFIG).read_text()
            program.run()
    record = (out / config_record.OPERATIVE_CONFIG).read_text()
    assert record == gin.operative_config_str()
    for binding in ("AudioCodec.mode = '16k'", "MMAudio."):
        assert binding in built, binding
    for binding in ("get_clip.", "get_synchformer."):
        assert binding in record, binding
