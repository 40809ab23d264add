"""MakeExampleData writes real, deterministic media of the advertised kinds and lengths."""

from __future__ import annotations

from pathlib import Path

import av

from mmgin import cli
from mmgin.data import tsv as tsv_io

REPO = Path(__file__).resolve().parents[1]


def _streams(path: Path) -> dict[str, tuple[str, float]]:
    with av.open(str(path)) as container:
        return {s.type: (s.codec_context.name, float(s.duration * s.time_base)) for s in container.streams}


def test_example_media_kinds_lengths_and_tables(example_workspace):
    videos = sorted((example_workspace / "videos").iterdir())
    assert [v.name for v in videos] == [f"video_{i:03d}.mp4" for i in range(4)]
    for video in videos:
        streams = _streams(video)
        assert streams["video"][0] == "h264" and streams["video"][1] >= 8.5
        assert streams["audio"][0] == "aac" and streams["audio"][1] >= 8.5
    audios = sorted((example_workspace / "audios").iterdir())
    assert [a.suffix for a in audios] == [".flac", ".flac"]
    assert all(_streams(a)["audio"][1] >= 17.0 for a in audios)
    labels = tsv_io.read_table(example_workspace / "video.tsv")
    assert [r["id"] for r in labels] == [v.stem for v in videos] and len({r["label"] for r in labels}) == 4
    captions = tsv_io.read_table(example_workspace / "captions.tsv")
    assert [r["id"] for r in captions] == [a.stem for a in audios]


def test_example_data_is_deterministic(example_workspace, tmp_path):
    cli.run(["gin/make_example_data.gin"], [f"OUTPUT_DIR = '{tmp_path}'"], [str(REPO)], dry_run=False)
    for folder in ("videos", "audios"):
        for path in sorted((example_workspace / folder).iterdir()):
            assert (tmp_path / folder / path.name).read_bytes() == path.read_bytes(), path.name
    for table in ("video.tsv", "captions.tsv"):
        assert (tmp_path / table).read_text() == (example_workspace / table).read_text()
