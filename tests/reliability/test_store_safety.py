"""Store safety (issue 17): what is beside a store, what its files say, what training reads.

Each scenario is a real store (written by the real writer, or by the extraction program with
tiny encoders on the example media) that is then damaged, crowded or extended as a user or
another job would: a folder named like the retired store, a dotted sibling store, an edited
meta.json, a NaN in a latent, rows added to the input table, a file truncated under a reader.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from mmgin import cli
from mmgin.data import null_text
from mmgin.data import tsv as tsv_io
from mmgin.data.datasets import ExtractedVideoDataset
from mmgin.data.mixture import DatasetMixture
from mmgin.data.store import FeatureStore, StoreError, StorePaths
from mmgin.testing.example import write_synthetic_store

from .harness import Forked
from .test_bad_inputs import CLOSE, rows_by_id

REPO = Path(__file__).resolve().parents[2]
TINY = "gin/test/tiny_encoders.gin"
LATENT = (4, 2)


def extract_audio(workspace: Path, clips: Path, store: Path, *extra: str) -> None:
    cli.run(["gin/extract_audio_16k.gin", TINY],
            [f"AUDIO_DIR = '{workspace / 'audios'}'", f"CAPTIONS_TSV = '{workspace / 'captions.tsv'}'",
             f"CLIPS_TSV = '{clips}'", f"OUTPUT_DIR = '{store}'", "ExtractAudioFeatures.num_workers = 0",
             "ExtractAudioFeatures.batch_size = 2", *extra],
            [str(REPO)], dry_run=False)


# ------------------------------------------------------------- 2: nothing beside a store is deleted
@pytest.mark.usefixtures("scenario")
def test_a_folder_named_like_the_retired_store_is_never_deleted(tmp_path):
    """`<store>.old/` used to be removed by every extraction, overwrite or not."""
    mine = tmp_path / "set.old"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    write_synthetic_store(tmp_path / "set", "audio", 2, latent_shape=LATENT, seed=1)
    newer = write_synthetic_store(tmp_path / "set", "audio", 3, latent_shape=LATENT, seed=2, overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.failures.tsv", "set.old", "set.tsv"]
    store = FeatureStore.open(tmp_path / "set")
    assert torch.equal(store.read(torch.arange(3))["mean"], newer["mean"])


@pytest.mark.usefixtures("scenario")
def test_overwrite_refuses_a_folder_that_is_not_a_store(example_workspace, tmp_path):
    """overwrite=True replaces a store, never a folder of other files (it used to wipe any)."""
    store = tmp_path / "clips"
    store.mkdir()
    (store / "notes.txt").write_text("mine\n")
    with pytest.raises(StoreError, match=r"exists but is not a finished store: it is no store \(no meta.json\)"):
        extract_audio(example_workspace, example_workspace / "clips.tsv", store, "ExtractAudioFeatures.overwrite = True")
    assert [p.name for p in store.iterdir()] == ["notes.txt"]
    with pytest.raises(StoreError, match=r"is not a feature store \(no meta.json\)"):
        write_synthetic_store(store, "audio", 2, latent_shape=LATENT, overwrite=True)  # the writer too
    assert [p.name for p in store.iterdir()] == ["notes.txt"]


# ----------------------------------------------------------- 3: files named from the full name
@pytest.mark.usefixtures("scenario")
def test_a_dotted_store_keeps_its_own_table(tmp_path):
    """A store `x.v2` used to write `x.tsv`, the table of a sibling store `x`."""
    write_synthetic_store(tmp_path / "x", "audio", 2, latent_shape=LATENT, seed=1, id_prefix="x_")
    write_synthetic_store(tmp_path / "x.v2", "audio", 3, latent_shape=LATENT, seed=2, id_prefix="v2_")
    assert FeatureStore.open(tmp_path / "x").ids == ["x_0000", "x_0001"]
    assert FeatureStore.open(tmp_path / "x.v2").ids == ["v2_0000", "v2_0001", "v2_0002"]
    assert (tmp_path / "x.v2.tsv").is_file() and (tmp_path / "x.v2.failures.tsv").is_file()
    # a dotted store whose table has the stem's name (the old naming) is not paired silently
    (tmp_path / "x.v2.tsv").unlink()
    with pytest.raises(StoreError, match=r"x\.v2\.tsv of store .* is missing, but .*x\.tsv exists.*rename"):
        FeatureStore.open(tmp_path / "x.v2")


# --------------------------------------------------- 8: every file checked against meta.json
def _edit_meta(store: Path, key: str, **entry: object) -> None:
    path = store / "meta.json"
    meta = json.loads(path.read_text())
    meta[key].update(entry)
    path.write_text(json.dumps(meta))


EDITS = {
    "memmap longer than meta.json says": (
        lambda s: (s / "mean.memmap").open("ab").write(bytes(64)), r"mean\.memmap is .* bytes.*longer"),
    "meta.json dtype edited to one of half the size": (
        lambda s: _edit_meta(s, "mean", dtype="torch.bfloat16"), r"mean\.memmap is .* bytes.*longer"),
    "meta.json dtype edited to one of the same size": (
        lambda s: _edit_meta(s, "mean", dtype="torch.int32"), r"meta\.json: entry 'mean' .* 'torch\.int32'"),
    "meta.json shape edited (rows still agree)": (
        lambda s: _edit_meta(s, "mean", shape=[3, 4, 1]), r"mean\.memmap is .* bytes.*longer"),
    "meta.json without a dtype": (
        lambda s: _edit_meta(s, "std", dtype=None), r"meta\.json: entry 'std'"),
    "corrupt meta.json": (
        lambda s: (s / "meta.json").write_text('{"mean": {"shape": [3'), r"meta\.json is unreadable \(JSONDecodeError"),
}


@pytest.mark.usefixtures("scenario")
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_store_files_that_disagree_with_meta_json_are_refused(tmp_path, edit):
    store = tmp_path / "set"
    write_synthetic_store(store, "audio", 3, latent_shape=LATENT)
    change, message = EDITS[edit]
    change(store)
    with pytest.raises(StoreError, match=message) as error:
        FeatureStore.open(store)
    assert str(store) in str(error.value)


# ------------------------------------------------------ 9: non-finite latents before training
@pytest.mark.usefixtures("scenario")
def test_a_nan_in_the_latents_is_refused_before_training(tmp_path):
    store = tmp_path / "vgg"
    write_synthetic_store(store, "video", 3, latent_shape=LATENT, id_prefix="v")
    row_bytes = math.prod(LATENT) * 4
    with (store / "mean.memmap").open("r+b") as f:
        f.seek(2 * row_bytes + 4)
        f.write(torch.tensor([float("nan")]).numpy().tobytes())
    mixture = DatasetMixture(video_sets=[ExtractedVideoDataset(store=store)])
    with pytest.raises(StoreError, match=rf"store {store}: field mean holds NaN .* in 1 row\(s\) \(ids v0002; rows \[2\]\)"):
        mixture.latent_statistics()


# ------------------------------------------------------------ 10: new input rows, append mode
@pytest.mark.usefixtures("scenario")
def test_new_input_rows_are_reported_and_appended(example_workspace, tmp_path, caplog):
    caplog.set_level("INFO")
    clips = tsv_io.read_table(example_workspace / "clips.tsv")
    table = tmp_path / "clips.tsv"
    tsv_io.write_table(table, list(clips[0]), clips[:2])
    store = tmp_path / "stores" / "clips"
    extract_audio(example_workspace, table, store)
    before = FeatureStore.open(store)
    old_rows = before.read(torch.arange(2))
    record = null_text.read(store)

    duplicate = dict(clips[3], id=clips[0]["id"])  # a new row reusing a stored id
    tsv_io.write_table(table, list(clips[0]), clips + [duplicate])
    extract_audio(example_workspace, table, store)
    assert "inputs changed since: 3 new input rows (2 to extract, 1 rejected) and 0 of its rows gone" in caplog.text
    assert FeatureStore.open(store).ids == before.ids  # nothing done unless asked

    other = torch.randn(1, 77, 1024)  # a record made by another text encoder: appending is refused
    null_text.write(store, other)
    with pytest.raises(StoreError, match="encodes '' differently"):
        extract_audio(example_workspace, table, store, "ExtractAudioFeatures.append = True")
    null_text.write(store, record[None])

    extract_audio(example_workspace, table, store, "ExtractAudioFeatures.append = True")
    after = FeatureStore.open(store)
    assert after.ids == [c["id"] for c in clips]
    new_rows = after.read(torch.arange(4))
    assert [k for k, v in old_rows.items() if not torch.equal(new_rows[k][:2], v)] == []  # old rows bit for bit
    got, want = rows_by_id(after), rows_by_id(FeatureStore.open(example_workspace / "stores" / "audio-16k"))
    for item in after.ids[2:]:
        for key, value in want[item].items():
            assert torch.allclose(got[item][key], value, **CLOSE[after.dtype(key)]), (item, key)
    assert tsv_io.read_table(StorePaths(store).failures) == [
        {"id": clips[0]["id"], "path": str(example_workspace / "audios" / f"{clips[3]['name']}.flac"),
         "reason": "duplicate_id"}]
    assert torch.equal(null_text.read(store), record)
    assert sorted(TensorDict.load_memmap(store).keys()) == ["mean", "std", "text_index", "text_table"]
    assert sorted(p.name for p in store.parent.iterdir()) == ["clips", "clips.failures.tsv", "clips.tsv"]

    extract_audio(example_workspace, table, store, "ExtractAudioFeatures.append = True")
    assert "clips is already complete; nothing to do" in caplog.text
    assert FeatureStore.open(store).ids == after.ids


# -------------------------------------------------------- 12: a file truncated under a reader
def _read_after_truncation(store: Path) -> None:
    opened = FeatureStore.open(store)
    opened.read(torch.arange(2))
    with (store / "clip_features.memmap").open("r+b") as f:
        f.truncate(0)  # another job rewrites the store while this one reads it
    with pytest.raises(StoreError, match=rf"{store}/clip_features\.memmap of store .* is now 0 bytes"):
        opened.read(torch.arange(2))


@pytest.mark.usefixtures("scenario")
def test_a_store_file_truncated_under_a_reader_is_named(tmp_path):
    """Reading a mapped page past a truncated file's end is SIGBUS: the read used to kill the
    process ("Bus error"), naming nothing. In a forked process, so that the test survives it."""
    store = tmp_path / "vgg"
    write_synthetic_store(store, "video", 2, latent_shape=LATENT)
    forked = Forked(lambda: _read_after_truncation(store))
    code = forked.join(timeout=120)
    assert code == 0, f"the reader ended with {code} (-7 is SIGBUS): {forked.error}"
