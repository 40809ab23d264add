"""Feature store layouts: reference-written stores load, ours load in tensordict, errors are clear."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from mmgin.data import null_text
from mmgin.data import tsv as tsv_io
from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.data.store import FeatureStore, StoreError, StoreFormat, StorePaths
from mmgin.data.store_writer import Plan, PlannedRow, StoreWriter, append_plan, input_changes
from mmgin.testing.example import write_synthetic_store


def _write_reference_video_store(directory, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """What the reference's merge step writes: TensorDict(dict).memmap_ plus a pandas-style tsv."""
    g = torch.Generator().manual_seed(seed)
    data = {
        "mean": torch.randn(n, 250, 20, generator=g),
        "std": torch.rand(n, 250, 20, generator=g),
        "clip_features": torch.randn(n, 64, 1024, generator=g),
        "sync_features": torch.randn(n, 192, 768, generator=g),
        "text_features": torch.randn(n, 77, 1024, generator=g),
    }
    TensorDict(data).memmap_(directory)
    with open(directory.parent / f"{directory.stem}.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "label"])
        for i in range(n):
            writer.writerow([f"{i:011d}_{i * 10:06d}", f"label, with \"quotes\" {i}"])
    return data


def test_reference_written_store_loads_unchanged(tmp_path):
    data = _write_reference_video_store(tmp_path / "vgg-train", 5)
    dataset = ExtractedVideoDataset(store=tmp_path / "vgg-train", latent_seq_len=250)
    assert len(dataset) == 5
    item = dataset[3]
    assert item["id"] == "00000000003_000030"
    assert item["caption"] == 'label, with "quotes" 3'
    for ours, theirs in (("a_mean", "mean"), ("a_std", "std"), ("clip_features", "clip_features"),
                         ("sync_features", "sync_features"), ("text_features", "text_features")):
        assert item[ours].dtype == torch.float32
        assert torch.equal(item[ours], data[theirs][3])
    assert bool(item["video_exist"]) and bool(item["text_exist"])
    # the reference configs name the memmap dir and the tsv separately
    same = ExtractedVideoDataset(memmap_dir=tmp_path / "vgg-train", tsv=tmp_path / "vgg-train.tsv")
    assert torch.equal(same[0]["clip_features"], data["clip_features"][0])


def test_our_stores_load_with_tensordict_and_keep_values(tmp_path):
    reference = write_synthetic_store(tmp_path / "ref", "video", 6, store_format=StoreFormat.reference())
    compact = write_synthetic_store(tmp_path / "small", "video", 6)
    td = TensorDict.load_memmap(tmp_path / "ref")
    assert sorted(td.keys()) == ["clip_features", "mean", "std", "sync_features", "text_features"]
    assert all(td[k].dtype == torch.float32 for k in td.keys())
    assert torch.equal(td["clip_features"].clone(), reference["clip_features"])
    td = TensorDict.load_memmap(tmp_path / "small")
    assert td["clip_features"].dtype == torch.bfloat16 and td["mean"].dtype == torch.float32
    assert td["text_table"].shape == (3, 77, 1024) and td["text_index"].tolist() == [0, 1, 2, 0, 1, 2]

    store = FeatureStore.open(tmp_path / "small")
    rows = store.read(torch.tensor([1, 4, 5]))
    assert all(v.dtype == torch.float32 for v in rows.values())
    assert torch.equal(rows["mean"], compact["mean"][[1, 4, 5]])
    assert torch.equal(rows["clip_features"], compact["clip_features"][[1, 4, 5]].bfloat16().float())
    assert torch.equal(rows["text_features"], compact["text_features"][[1, 4, 5]].bfloat16().float())
    ratio = store.bytes_read(torch.arange(6)) / FeatureStore.open(tmp_path / "ref").bytes_read(torch.arange(6))
    assert ratio <= 0.5


def test_audio_store_items_have_empty_video(tmp_path):
    write_synthetic_store(tmp_path / "clips", "audio", 3, latent_shape=(345, 40))
    dataset = ExtractedAudioDataset(store=tmp_path / "clips", latent_seq_len=345)
    item = dataset[2]
    assert item["a_mean"].shape == (345, 40)
    assert not bool(item["video_exist"]) and bool(item["text_exist"])
    assert item["clip_features"].shape == (64, 1024) and not item["clip_features"].any()
    assert item["sync_features"].shape == (192, 768) and not item["sync_features"].any()
    with pytest.raises(StoreError, match="latents have length 345, expected 250"):
        ExtractedAudioDataset(store=tmp_path / "clips", latent_seq_len=250)
    with pytest.raises(StoreError, match="audio store"):
        ExtractedVideoDataset(store=tmp_path / "clips")


def test_memmap_shorter_than_tsv_names_both_files(tmp_path):
    _write_reference_video_store(tmp_path / "vgg-val", 3)
    rows = tsv_io.read_table(tmp_path / "vgg-val.tsv")
    tsv_io.write_table(tmp_path / "vgg-val.tsv", ["id", "label"], rows + [{"id": "extra", "label": "x"}])
    with pytest.raises(StoreError) as error:
        FeatureStore.open(tmp_path / "vgg-val")
    message = str(error.value)
    assert "3 rows, shorter than its table" in message
    assert f"{tmp_path / 'vgg-val'}/clip_features.memmap" in message
    assert str(tmp_path / "vgg-val.tsv") in message


def test_missing_store_mentions_unfinished_extraction(tmp_path):
    (tmp_path / "set.partial").mkdir()
    with pytest.raises(StoreError, match="unfinished extraction"):
        FeatureStore.open(tmp_path / "set")


def _plan(n: int, labels: list[str]) -> Plan:
    rows = [PlannedRow({"id": f"v{i}", "label": labels[i]}, labels[i], f"/media/v{i}.mp4") for i in range(n)]
    return Plan(("id", "label"), rows, {"mean": (4, 2), "std": (4, 2), "clip_features": (64, 1024),
                                        "sync_features": (192, 768)}, (77, 1024), StoreFormat(),
                [{"id": "gone", "path": "/media/gone.mp4", "reason": "missing_file"}])


def test_writer_resumes_compacts_failures_and_refuses_other_inputs(tmp_path):
    labels = ["dog", "cat", "dog", "bird", "cat"]
    plan = _plan(5, labels)
    features = {k: torch.randn((5,) + s) for k, s in plan.row_shapes.items()}
    first = StoreWriter(tmp_path / "set", plan)
    assert first.prepare() == "new"
    first.open()
    first.write_rows([0, 1], {k: v[:2] for k, v in features.items()})
    first.close()  # the process "dies" here

    with pytest.raises(StoreError, match="different inputs"):
        StoreWriter(tmp_path / "set", _plan(5, ["dog"] * 5)).prepare()
    second = StoreWriter(tmp_path / "set", plan)
    assert second.prepare() == "resume"
    assert second.row_status().tolist() == [1, 1, 0, 0, 0]
    second.open()
    second.fail_row(2, "unreadable", "cannot decode")
    second.write_rows([3, 4], {k: v[3:] for k, v in features.items()})
    second.write_text([0, 1, 2], torch.randn(3, 77, 1024))
    second.close()
    summary = second.finalize()
    assert summary.rows == 4 and summary.failed == {"unreadable": 1} and summary.rejected == {"missing_file": 1}

    assert not (tmp_path / "set.partial").exists()
    store = FeatureStore.open(tmp_path / "set")
    assert store.ids == ["v0", "v1", "v3", "v4"] and store.captions == ["dog", "cat", "bird", "cat"]
    kept = [0, 1, 3, 4]
    assert torch.equal(store.read(torch.arange(4))["mean"], features["mean"][kept])
    failures = tsv_io.read_table(tmp_path / "set.failures.tsv")
    assert failures == [{"id": "gone", "path": "/media/gone.mp4", "reason": "missing_file"},
                        {"id": "v2", "path": "/media/v2.mp4", "reason": "unreadable"}]


def test_replacing_a_store_needs_overwrite(tmp_path):
    write_synthetic_store(tmp_path / "set", "audio", 2, latent_shape=(4, 2), seed=1)
    with pytest.raises(StoreError, match="already exists"):
        write_synthetic_store(tmp_path / "set", "audio", 3, latent_shape=(4, 2), seed=2)
    assert len(FeatureStore.open(tmp_path / "set")) == 2  # the old store and its tsv are untouched
    newer = write_synthetic_store(tmp_path / "set", "audio", 3, latent_shape=(4, 2), seed=2, overwrite=True)
    store = FeatureStore.open(tmp_path / "set")
    assert len(store) == 3 and torch.equal(store.read(torch.arange(3))["mean"], newer["mean"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.failures.tsv", "set.tsv"]


def _written_writer(directory: Path, plan: Plan, features: dict, text: torch.Tensor) -> StoreWriter:
    """A writer whose rows are all written (row 1 failed), ready to finalise."""
    writer = StoreWriter(directory, plan)
    writer.prepare()
    writer.open()
    writer.fail_row(1, "unreadable", "cannot decode")
    writer.write_rows([0, 2], {k: v[[0, 2]] for k, v in features.items()})
    writer.write_text([0, 1], text)
    writer.close()
    return writer


def test_finalisation_killed_during_its_cleanup_resumes(tmp_path, monkeypatch):
    """A kill after the progress files are deleted (the cleanup's middle) leaves a work dir that
    the next run finishes into the same store; it used to look like an unfinished extraction
    whose progress files were missing."""
    plan = _plan(3, ["dog", "cat", "dog"])
    features = {k: torch.randn((3,) + s) for k, s in plan.row_shapes.items()}
    text = torch.randn(2, 77, 1024)
    _written_writer(tmp_path / "reference" / "set", plan, features, text).finalize()
    writer = _written_writer(tmp_path / "killed" / "set", plan, features, text)
    remove_tree = shutil.rmtree

    def killed_at_the_failures_dir(path, *args, **kwargs):
        if Path(path).name == "failures":
            raise SystemExit("killed")
        remove_tree(path, *args, **kwargs)

    monkeypatch.setattr("mmgin.data.store_writer.shutil.rmtree", killed_at_the_failures_dir)
    with pytest.raises(SystemExit):
        writer.finalize()
    monkeypatch.undo()
    partial = tmp_path / "killed" / "set.partial"
    assert not (partial / "progress.rows").exists() and (partial / "failures").is_dir()

    resumed = StoreWriter(tmp_path / "killed" / "set", plan)
    assert resumed.prepare() == "finalizing"
    summary = resumed.finalize()
    assert summary.rows == 2 and summary.failed == {"unreadable": 1}

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "killed") == files(tmp_path / "reference")


def _append_to(store: Path, new_labels: list[str]) -> StoreWriter:
    """A writer appending rows n0, n1, ... (labels ``new_labels``) to ``store``, row n1 failed,
    killed once after the first new row ("dies"), then resumed; ready to finalise."""
    stored = tsv_io.read_table(StorePaths(store).tsv)
    rows = [PlannedRow(dict(r), r["label"], f"/media/{r['id']}.mp4") for r in stored]
    rows += [PlannedRow({"id": f"n{i}", "label": label}, label, f"/media/n{i}.mp4") for i, label in enumerate(new_labels)]
    plan = Plan(("id", "label"), rows, {"mean": (4, 2), "std": (4, 2), "clip_features": (64, 1024),
                                        "sync_features": (192, 768)}, (77, 1024), StoreFormat.reference())
    changes = input_changes(plan, stored, [])
    assert [r.id for r in changes.new_rows] == [f"n{i}" for i in range(len(new_labels))] and changes.gone == 0
    appending = append_plan(store, plan, changes, [])
    features = {k: torch.randn((len(new_labels),) + s, generator=torch.Generator().manual_seed(5))
                for k, s in plan.row_shapes.items()}
    first = StoreWriter(store, appending)
    assert first.prepare() == "new"
    first.open()
    first.write_rows([0], {k: v[:1] for k, v in features.items()})
    first.close()
    resumed = StoreWriter(store, appending)
    assert resumed.prepare() == "resume"
    resumed.open()
    resumed.fail_row(1, "unreadable", "cannot decode")
    resumed.write_rows([2], {k: v[2:] for k, v in features.items()})
    resumed.write_text(list(range(len(resumed.captions))), torch.ones(len(resumed.captions), 77, 1024))
    resumed.close()
    null_text.write(resumed.work, null_text.read(store))
    return resumed


@pytest.mark.parametrize("killed_at", [None, "renaming the merged files", "writing the table"])
def test_append_keeps_the_stores_rows_and_resumes(tmp_path, monkeypatch, killed_at):
    """Append in the reference layout (a text feature per row): the store's rows bit for bit,
    then the new ones; one killed finalisation (after the merge, after the store was moved
    aside) resumes to the same files, and nothing is left beside the store."""
    store = tmp_path / "set"
    old = write_synthetic_store(store, "video", 3, latent_shape=(4, 2), captions=["dog", "cat", "dog"],
                                store_format=StoreFormat.reference(), id_prefix="v")
    writer = _append_to(store, ["cat", "bird", "owl"])
    if killed_at is not None:
        replace, write_table = os.replace, tsv_io.write_table

        def kill_rename(source, target):
            if str(source).endswith(".merging"):
                raise SystemExit("killed")
            replace(source, target)

        def kill_table(path, *args):
            if Path(path) == StorePaths(store).tsv:
                raise SystemExit("killed")
            write_table(path, *args)

        if killed_at == "renaming the merged files":
            monkeypatch.setattr("mmgin.data.store_writer.os.replace", kill_rename)
        else:
            monkeypatch.setattr("mmgin.data.store_writer.tsv_io.write_table", kill_table)
        with pytest.raises(SystemExit):
            writer.finalize()
        monkeypatch.undo()
        writer = StoreWriter(store, writer.plan)
        assert writer.prepare() == "resume"
    summary = writer.finalize()
    assert summary.rows == 5 and summary.appended == 2 and summary.failed == {"unreadable": 1}
    opened = FeatureStore.open(store)
    assert opened.ids == ["v0000", "v0001", "v0002", "n0", "n2"]
    td = TensorDict.load_memmap(store)
    for key in ("mean", "clip_features", "text_features"):
        assert torch.equal(td[key][:3], old[key]), key
    assert torch.equal(td["text_features"][3:], torch.ones(2, 77, 1024))
    assert tsv_io.read_table(StorePaths(store).failures) == [{"id": "n1", "path": "/media/n1.mp4", "reason": "unreadable"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.failures.tsv", "set.tsv"]
    assert sorted(p.name for p in store.iterdir()) == sorted(
        ["meta.json", "empty_string.pth"] + [f"{k}.memmap" for k in td.keys()])


def test_append_to_a_deduplicated_store_shifts_the_new_text_indices(tmp_path):
    store = tmp_path / "set"
    old = write_synthetic_store(store, "video", 3, latent_shape=(4, 2), captions=["dog", "cat", "dog"], id_prefix="v")
    with pytest.raises(StoreError, match="laid out with feature_dtype='bf16', dedup_text=True"):
        _append_to(store, ["cat"])  # configured for the reference layout
    stored = tsv_io.read_table(StorePaths(store).tsv)
    plan = Plan(("id", "label"), [PlannedRow({"id": "n0", "label": "owl"}, "owl", "/media/n0.mp4")],
                {"mean": (4, 2), "std": (4, 2), "clip_features": (64, 1024), "sync_features": (192, 768)},
                (77, 1024), StoreFormat())
    writer = StoreWriter(store, append_plan(store, plan, input_changes(plan, stored, []), []))
    writer.prepare()
    writer.open()
    writer.write_rows([0], {k: torch.zeros((1,) + s) for k, s in plan.row_shapes.items()})
    writer.write_text([0], torch.ones(1, 77, 1024))
    writer.close()
    writer.finalize()
    opened = FeatureStore.open(store)
    rows = opened.read(torch.arange(4))
    assert torch.equal(rows["text_features"][:3], old["text_features"].bfloat16().float())
    assert torch.equal(rows["text_features"][3], torch.ones(77, 1024))
    assert TensorDict.load_memmap(store)["text_index"].tolist() == [0, 1, 0, 2]


def test_plan_json_keeps_the_storage_dtype_names_the_setting_words_stand_for():
    """`feature_dtype` takes the precision words, but plan.json (which a resumed run, maybe of
    another mmgin version, compares with its own plan) records the torch dtype names it always
    recorded."""
    for word, name in (("bf16", "bfloat16"), ("fp32", "float32"), ("fp16", "float16")):
        plan = Plan(("id", "label"), [PlannedRow({"id": "a", "label": "x"}, "x", "/a.mp4")],
                    {"mean": (4, 2)}, (77, 1024), StoreFormat(word, True))
        assert json.loads(plan.to_json())["format"] == [name, True]
        assert Plan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="feature_dtype='bfloat16'"):
        StoreFormat("bfloat16")
