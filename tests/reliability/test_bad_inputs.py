"""A corpus of bad (and unusual but good) inputs through the real extraction programs.

Each kind-group is ONE in-process extraction run over many files (tiny encoders), so the whole
corpus costs a few runs. For every run: the extraction finishes, the good rows equal a clean
run's rows (the example workspace's stores), every bad input is in the failure report with
its reason, and unusual-but-valid media (8 kHz mono, 96 kHz 5.1, variable frame rate, 4K,
mpeg4 / vp9 in webm / mjpeg + pcm in mkv, unicode and spaces in names) are extracted. Bad
configurations (tables that cannot be read) stop with a clear error before any work starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmgin import cli
from mmgin.data import tsv as tsv_io
from mmgin.data.store import FeatureStore, StoreError, StorePaths
from mmgin.data.tsv import TableError
from mmgin.programs.extract_video import plan_video_rows

from .media import Sound, tone, truncate, write_audio_only, write_video

REPO = Path(__file__).resolve().parents[2]
TINY = "gin/test/tiny_encoders.gin"
# Rows must equal the clean run's rows up to the float noise of another batch composition
# (blocks and the caption batch hold other rows here than in the example run): float32 features
# to 1e-5, bfloat16-stored features to a couple of bfloat16 steps. A shifted or mixed-up row
# differs by far more.
CLOSE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2**-6, atol=2**-10)}
ODD_LABEL = 'a "quoted" label\twith a tab,\na newline and ü'


def extract_video(videos: Path, table: Path, store: Path, *extra: str) -> None:
    cli.run(["gin/extract_video_16k.gin", TINY],
            [f"VIDEO_DIR = '{videos}'", f"VIDEO_TSV = '{table}'", f"OUTPUT_DIR = '{store}'",
             "ExtractVideoFeatures.num_workers = 0", "ExtractVideoFeatures.batch_size = 4", *extra],
            [str(REPO)], dry_run=False)


def extract_audio(audios: Path, captions: Path, clips: Path, store: Path) -> None:
    cli.run(["gin/extract_audio_16k.gin", TINY],
            [f"AUDIO_DIR = '{audios}'", f"CAPTIONS_TSV = '{captions}'", f"CLIPS_TSV = '{clips}'",
             f"OUTPUT_DIR = '{store}'", "ExtractAudioFeatures.num_workers = 0",
             "ExtractAudioFeatures.batch_size = 4"],
            [str(REPO)], dry_run=False)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def failure_reasons(store: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in tsv_io.read_table(StorePaths(store).failures)}


def rows_by_id(store: FeatureStore) -> dict[str, dict[str, torch.Tensor]]:
    features = store.read(torch.arange(len(store)))
    return {item: {k: v[i] for k, v in features.items()} for i, item in enumerate(store.ids)}


def assert_rows_match_clean_run(store: Path, clean: Path, ids: list[str], tally) -> None:
    """The good rows amid bad inputs equal the clean run's rows (counted as data lost if not)."""
    clean_store = FeatureStore.open(clean)
    got, want = rows_by_id(FeatureStore.open(store)), rows_by_id(clean_store)
    lost = []
    for item in ids:
        for key, value in want[item].items():
            tolerance = CLOSE[clean_store.dtype(key)]
            if item not in got or not torch.allclose(got[item][key], value, **tolerance):
                lost.append(f"{item} {key}")
    tally.add(f"good rows amid bad inputs ({store.name} of {clean.name})", not lost, len(lost))
    assert lost == [], lost


def assert_valid_rows(store: Path, ids: list[str]) -> None:
    rows = rows_by_id(FeatureStore.open(store))
    for item in ids:
        for key, value in rows[item].items():
            assert bool(torch.isfinite(value).all()) and value.abs().sum() > 0, f"{item} {key}"


# ----------------------------------------------------------------------------- video corpus
GOOD_VIDEOS = ["video_000", "video_001"]
# id -> (what it is, the reason the failure report must give)
BAD_VIDEOS = {
    "zero_bytes": ("zero-byte .mp4", "unreadable"),
    "text_as_mp4": ("text file named .mp4", "unreadable"),
    "truncated": ("truncated mp4 (first half)", "unreadable"),
    "no_audio": ("video without an audio stream", "no_audio_stream"),
    "audio_only": ("audio-only mp4", "no_video_stream"),
    "half_second": ("0.5 s clip", "too_short"),
    "five_seconds": ("5 s video (8 s needed)", "too_short"),
    "silent_audio": ("digitally silent soundtrack", "silent"),
    "one_by_one": ("1x1 frames", "bad_frame_size"),
    "fps_2000": ("2000 fps video stream", "bad_frame_rate"),
    "../../evil": ("id with '..' (a real video there)", "missing_file"),
    "a/b": ("id with a path separator (a real video there)", "missing_file"),
    "": ("empty id", "missing_file"),
    "absent": ("id with no file", "missing_file"),
    "empty_label": ("empty label", "empty_caption"),
    "no_label_field": ("row without its label field", "empty_caption"),
}


@pytest.fixture(scope="module")
def video_corpus(example_workspace, tmp_path_factory) -> tuple[Path, Path, set[Path]]:
    """Bad videos around two of the example's videos, at the real 8 s clip duration; the good
    rows sit in blocks with bad ones, so a failure inside a batch is exercised."""
    root = tmp_path_factory.mktemp("video_corpus")
    videos = root / "deep" / "videos"
    videos.mkdir(parents=True)
    examples = example_workspace / "videos"
    for name in GOOD_VIDEOS:
        shutil.copy(examples / f"{name}.mp4", videos / f"{name}.mp4")
    (videos / "zero_bytes.mp4").write_bytes(b"")
    (videos / "text_as_mp4.mp4").write_text("id\tlabel\nthis is a caption table, not a video\n")
    truncate(examples / "video_002.mp4", videos / "truncated.mp4")
    write_video(videos / "no_audio.mp4", sound=None)
    write_audio_only(videos / "audio_only.mp4", 8.6, Sound(44100, 1, "aac"))
    write_video(videos / "half_second.mp4", seconds=0.5)
    write_video(videos / "five_seconds.mp4", seconds=5.0)
    write_video(videos / "silent_audio.mp4", sound=Sound(silent=True))
    write_video(videos / "one_by_one.mp4", size=(1, 1), codec="mpeg4")
    write_video(videos / "fps_2000.mp4", fps=2000, seconds=0.2, codec="mpeg4", audio_seconds=8.6)
    for name in ("empty_label", "no_label_field"):
        shutil.copy(videos / "video_000.mp4", videos / f"{name}.mp4")
    # Real files where ids with path parts would lead if they were joined to the folder.
    shutil.copy(videos / "video_000.mp4", root / "evil.mp4")
    (videos / "a").mkdir()
    shutil.copy(videos / "video_000.mp4", videos / "a" / "b.mp4")

    labels = {r["id"]: r["label"] for r in tsv_io.read_table(example_workspace / "video.tsv")}
    order = ["video_000", "zero_bytes", "text_as_mp4", "empty_label", "video_001", "truncated",
             "no_audio", "audio_only", "half_second", "five_seconds", "silent_audio", "one_by_one",
             "fps_2000", "../../evil", "a/b", "", "absent", "video_000"]
    rows = [{"id": i, "label": "" if i == "empty_label" else labels.get(i, f"the {i} video")} for i in order]
    table = root / "videos.tsv"
    table.write_text(tsv_io.format_table(["id", "label"], rows) + "no_label_field\n", encoding="utf-8")
    store = root / "stores" / "corpus"
    before = files_under(root)
    extract_video(videos, table, store)
    return store, root, files_under(root) - before


def test_video_corpus_keeps_the_good_rows_in_order(video_corpus):
    store, _, _ = video_corpus
    assert [r["id"] for r in tsv_io.read_table(StorePaths(store).tsv)] == GOOD_VIDEOS
    assert not StorePaths(store).partial.exists()


def test_video_corpus_good_rows_equal_the_clean_run(video_corpus, example_workspace, tally):
    store, _, _ = video_corpus
    assert_rows_match_clean_run(store, example_workspace / "stores" / "video-16k", GOOD_VIDEOS, tally)


def test_every_bad_video_is_reported_with_its_reason(video_corpus, tally):
    store, root, new_files = video_corpus
    reasons = failure_reasons(store)
    for item, (kind, reason) in BAD_VIDEOS.items():
        tally.add(f"bad video: {kind} -> {reason}", reasons.get(item) == reason)
    tally.add("bad video: duplicate id -> duplicate_id", reasons.get("video_000") == "duplicate_id")
    assert {k: reasons.get(k) for k in BAD_VIDEOS} == {k: r for k, (_, r) in BAD_VIDEOS.items()}
    assert reasons.get("video_000") == "duplicate_id"
    assert len(reasons) == len(BAD_VIDEOS) + 1
    outside = [p for p in new_files if root / "stores" not in p.parents]
    assert outside == [], outside


UNUSUAL_VIDEOS = {
    "uhd_4k": "3840x2160 frames (h264)",
    "side_16": "16x16 frames, the smallest accepted",
    "clip ü é": "mpeg4 + 8 kHz mono AAC, unicode and spaces in the name, a label with quotes/tab/newline",
    "vfr_vp9": "vp9 in webm at a variable frame rate + 48 kHz stereo opus",
    "mjpeg_96k_6ch": "mjpeg in mkv + 96 kHz 5.1 pcm",
}


@pytest.fixture(scope="module")
def unusual_videos(tmp_path_factory) -> Path:
    """Valid but unusual videos: 4K, the smallest accepted side, mpeg4 with 8 kHz mono sound
    and a unicode name with spaces, vp9 in webm at a variable frame rate with opus, mjpeg in
    mkv with 96 kHz 5.1 pcm; and 1x1 frames, which are rejected. At a 1 s clip duration:
    decoding 8 s of 4K frames alone would cost several CPU seconds."""
    root = tmp_path_factory.mktemp("unusual_videos")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "uhd_4k.mp4", size=(3840, 2160), fps=2, seconds=1.5)
    write_video(videos / "side_16.mp4", size=(16, 16), seconds=1.5)
    write_video(videos / "one_by_one.mp4", size=(1, 1), codec="mpeg4", seconds=1.5)
    write_video(videos / "clip ü é.mp4", codec="mpeg4", seconds=1.5, sound=Sound(8000, 1, "aac"))
    vfr = [0.0]
    while vfr[-1] < 1.5:  # frame gaps cycling through 60, 30, 12 and 10 fps
        vfr.append(vfr[-1] + (1 / 60, 1 / 30, 1 / 12, 0.1)[len(vfr) % 4])
    write_video(videos / "vfr_vp9.webm", codec="libvpx-vp9", times=vfr, sound=Sound(48000, 2, "libopus"))
    write_video(videos / "mjpeg_96k_6ch.mkv", codec="mjpeg", pix_fmt="yuvj420p", seconds=1.5,
                sound=Sound(96000, 6, "pcm_s16le"))
    names = ["uhd_4k", "one_by_one", "side_16", "clip ü é", "vfr_vp9", "mjpeg_96k_6ch"]
    labels = [ODD_LABEL if n == "clip ü é" else n for n in names]
    tsv_io.write_table(root / "videos.tsv", ["id", "label"], [{"id": n, "label": l} for n, l in zip(names, labels)])
    store = root / "unusual"
    extract_video(videos, root / "videos.tsv", store, "ExtractVideoFeatures.duration = 1.0")
    return store


def test_unusual_but_valid_videos_are_extracted(unusual_videos, tally):
    table = tsv_io.read_table(StorePaths(unusual_videos).tsv)
    for item, kind in UNUSUAL_VIDEOS.items():
        tally.add(f"valid video: {kind} -> extracted", item in [r["id"] for r in table])
    assert [r["id"] for r in table] == list(UNUSUAL_VIDEOS)
    assert table[2]["label"] == ODD_LABEL  # quotes, tab, newline and unicode survive the table
    assert_valid_rows(unusual_videos, list(UNUSUAL_VIDEOS))
    assert FeatureStore.open(unusual_videos).shape("clip_features") == (8, 1024)


@pytest.mark.usefixtures("scenario")
def test_1x1_frames_are_rejected(unusual_videos):
    assert failure_reasons(unusual_videos) == {"one_by_one": "bad_frame_size"}


# ----------------------------------------------------------------------------- audio corpus
BAD_CLIPS = {
    "silent_0": ("silent flac", "silent"),
    "zero_bytes_0": ("zero-byte .flac", "unreadable"),
    "text_as_flac_0": ("text file named .flac", "unreadable"),
    "truncated_0": ("truncated flac (first half)", "unreadable"),
    "short_0": ("5 s wav (8.1 s clip asked for)", "too_short"),
    "duplicate": ("duplicate clip id", "duplicate_id"),
    "backwards": ("clip span with end before start", "bad_span"),
    "uncaptioned_0": ("file without a caption", "no_caption"),
    "absent_0": ("captioned name with no file", "missing_file"),
    "empty_caption_0": ("empty caption", "empty_caption"),
}
VALID_CLIPS = {
    "../../evil_0": "8 kHz mono wav (clip id with '..')",
    "/abs/path_0": "96 kHz 5.1 flac (absolute clip id)",
    "a/b 🎵": "48 kHz stereo opus, unicode name with spaces, caption with quotes/tab/newline (id with '/')",
}


@pytest.fixture(scope="module")
def audio_corpus(example_workspace, tmp_path_factory) -> tuple[Path, set[Path]]:
    root = tmp_path_factory.mktemp("audio_corpus")
    audios = root / "audios"
    audios.mkdir()
    shutil.copy(example_workspace / "audios" / "audio_000.flac", audios / "audio_000.flac")
    write_audio_only(audios / "rate_8k_mono.wav", 9.0, Sound(8000, 1, "pcm_s16le"))
    write_audio_only(audios / "rate_96k_6ch.flac", 9.0, Sound(96000, 6, "flac"))
    write_audio_only(audios / "chœur à deux.ogg", 9.0, Sound(48000, 2, "libopus"))
    write_audio_only(audios / "silent.flac", 9.0, Sound(16000, 1, "flac", silent=True))
    (audios / "zero_bytes.flac").write_bytes(b"")
    (audios / "text_as_flac.flac").write_text("fLaC? no, a caption\n")
    write_audio_only(audios / "long.flac", 9.0, Sound(16000, 1, "flac"))
    truncate(audios / "long.flac", audios / "truncated.flac")
    write_audio_only(audios / "short.wav", 5.0, Sound(16000, 1, "pcm_s16le"))
    write_audio_only(audios / "uncaptioned.flac", 9.0, Sound(16000, 1, "flac"))
    write_audio_only(audios / "empty_caption.flac", 9.0, Sound(16000, 1, "flac"))

    example_clips = [c for c in tsv_io.read_table(example_workspace / "clips.tsv") if c["name"] == "audio_000"]
    span = {"start_sample": "0", "end_sample": str(int(8.1 * 16000))}
    clips = [example_clips[0]]
    for name in ("silent", "zero_bytes", "text_as_flac", "truncated", "short", "uncaptioned", "absent",
                 "empty_caption"):
        clips.append({"id": f"{name}_0", "name": name, **span})
    clips += [example_clips[1],
              {"id": "../../evil_0", "name": "rate_8k_mono", "start_sample": "0", "end_sample": str(8 * 8100)},
              {"id": "/abs/path_0", "name": "rate_96k_6ch", "start_sample": "0", "end_sample": str(96 * 8100)},
              {"id": "a/b 🎵", "name": "chœur à deux", "start_sample": "0", "end_sample": str(48 * 8100)},
              {"id": "duplicate", "name": "long", **span},  # good; the next row is the duplicate
              {"id": "duplicate", "name": "long", **span},
              {"id": "backwards", "name": "long", "start_sample": "100", "end_sample": "50"}]
    tsv_io.write_table(root / "clips.tsv", ["id", "name", "start_sample", "end_sample"], clips)

    captions = {r["id"]: r["caption"] for r in tsv_io.read_table(example_workspace / "captions.tsv")}
    captions.update({n: f"the sound of {n}" for n in (
        "rate_8k_mono", "rate_96k_6ch", "silent", "zero_bytes", "text_as_flac", "truncated", "short",
        "long", "absent", "matches_no_file")})
    captions["chœur à deux"] = ODD_LABEL
    captions["empty_caption"] = ""
    text = tsv_io.format_table(["id", "caption"], [{"id": k, "caption": v} for k, v in captions.items()])
    (root / "captions.tsv").write_text("\ufeff" + text, encoding="utf-8")  # as spreadsheets save it
    store = root / "stores" / "corpus"
    before = files_under(root)
    extract_audio(audios, root / "captions.tsv", root / "clips.tsv", store)
    return store, files_under(root) - before


GOOD_CLIPS = ["audio_000_0", "audio_000_1", "../../evil_0", "/abs/path_0", "a/b 🎵", "duplicate"]


def test_audio_corpus_keeps_good_clips_in_order(audio_corpus):
    store, _ = audio_corpus
    table = tsv_io.read_table(StorePaths(store).tsv)
    assert [r["id"] for r in table] == GOOD_CLIPS
    assert table[4]["caption"] == ODD_LABEL


def test_audio_corpus_good_rows_equal_the_clean_run(audio_corpus, example_workspace, tally):
    store, _ = audio_corpus
    assert_rows_match_clean_run(store, example_workspace / "stores" / "audio-16k", ["audio_000_0", "audio_000_1"],
                                tally)


def test_8k_mono_96k_surround_and_opus_clips_are_extracted(audio_corpus, tally):
    store, _ = audio_corpus
    extracted = FeatureStore.open(store).ids
    for item, kind in VALID_CLIPS.items():
        tally.add(f"valid audio: {kind} -> extracted", item in extracted)
    assert_valid_rows(store, list(VALID_CLIPS) + ["duplicate"])


def test_every_bad_clip_is_reported_with_its_reason(audio_corpus, tally):
    store, new_files = audio_corpus
    reasons = failure_reasons(store)
    for item, (kind, reason) in BAD_CLIPS.items():
        tally.add(f"bad audio: {kind} -> {reason}", reasons.get(item) == reason)
    assert reasons == {k: r for k, (_, r) in BAD_CLIPS.items()}
    outside = [p for p in new_files if store.parent not in p.parents]
    assert outside == [], outside


# ------------------------------------------------------------------------- bad configuration
@pytest.fixture(scope="module")
def one_video(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("one_video") / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", seconds=1.0)
    return videos


def assert_no_work_started(store: Path) -> None:
    partial = StorePaths(store).partial
    assert not store.exists() and not StorePaths(store).tsv.exists()
    leftovers = {p.name for p in partial.iterdir()} if partial.exists() else set()
    assert leftovers <= {"config.gin", "operative_config.gin"}, leftovers


@pytest.mark.usefixtures("scenario")
@pytest.mark.parametrize("name,text,message", [
    ("missing_column", "id\tcaption\nclip\ta clip\n", r"lacks column\(s\) label \(has: id, caption\)"),
    ("wrong_delimiter", "id,label\nclip,a clip\n", r"lacks column\(s\) id, label .*tab-separated header"),
    ("empty_file", "", r"lacks column\(s\) id, label \(has: none\)"),
    ("no_such_ids", "id\tlabel\nnope\ta\nnada\tb\n", r"no row of .* has a video .*2 rejected"),
])
def test_bad_video_table_stops_before_any_work(one_video, tmp_path, name, text, message):
    table = tmp_path / f"{name}.tsv"
    table.write_text(text, encoding="utf-8")
    store = tmp_path / "store"
    with pytest.raises((TableError, ValueError), match=message) as info:
        extract_video(one_video, table, store)
    assert str(table) in str(info.value)
    assert_no_work_started(store)


@pytest.mark.usefixtures("scenario")
def test_captions_that_match_no_clip_stop_with_a_report(example_workspace, tmp_path):
    captions = tmp_path / "captions.tsv"
    tsv_io.write_table(captions, ["id", "caption"], [{"id": "nobody", "caption": "a caption for nothing"}])
    store = tmp_path / "store"
    with pytest.raises(ValueError, match=r"no clip of .*clips.tsv could be extracted \(4 rejected"):
        extract_audio(example_workspace / "audios", captions, example_workspace / "clips.tsv", store)
    assert set(failure_reasons(store).values()) == {"no_caption"}
    assert_no_work_started(store)


@pytest.mark.usefixtures("scenario")
def test_missing_media_folder_is_a_clear_error(tmp_path, example_workspace):
    with pytest.raises(FileNotFoundError, match=r"VIDEO_DIR .*nowhere is not a directory"):
        extract_video(tmp_path / "nowhere", example_workspace / "video.tsv", tmp_path / "store")


@pytest.mark.usefixtures("scenario")
def test_byte_order_mark_is_read_like_pandas(example_workspace, tmp_path):
    plain = example_workspace / "video.tsv"
    marked = tmp_path / "video.tsv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    videos = example_workspace / "videos"
    assert plan_video_rows(videos, marked) == plan_video_rows(videos, plain)


# ------------------------------------------------------------------------------ broken stores
def copy_store(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    shutil.copy(StorePaths(source).tsv, StorePaths(target).tsv)
    return target


@pytest.mark.usefixtures("scenario")
def test_store_with_more_table_rows_than_memmap_rows_is_refused(example_workspace, tmp_path):
    store = copy_store(example_workspace / "stores" / "video-16k", tmp_path / "video-16k")
    with StorePaths(store).tsv.open("a", encoding="utf-8") as table:
        table.write("video_999\tan extra row\n")
    with pytest.raises(StoreError, match=r"\.memmap has 4 rows, shorter than its table .*\(5 rows\)"):
        FeatureStore.open(store)


@pytest.mark.usefixtures("scenario")
def test_truncated_memmap_file_is_refused_and_left_untouched(example_workspace, tmp_path):
    store = copy_store(example_workspace / "stores" / "video-16k", tmp_path / "video-16k")
    memmap = store / "clip_features.memmap"
    size = memmap.stat().st_size
    with memmap.open("r+b") as f:
        f.truncate(size // 3)
    with pytest.raises(StoreError, match=r"clip_features.memmap is .* bytes; .* expects"):
        FeatureStore.open(store)
    assert memmap.stat().st_size == size // 3  # a reader never rewrites the data
