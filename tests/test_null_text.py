"""The null-text feature end to end: extraction records the text encoder's encoding of '' in
each store, Train builds a network from scratch with it, stores without it or disagreeing are
refused before any step, and RecordNullText adds it to an existing store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from mmgin import cli, io
from mmgin.data import null_text
from mmgin.data.store import StoreError
from mmgin.testing.example import train_params, write_synthetic_store
from mmgin.train import checkpoint as ckpt
from mmgin.vision import get_clip

REPO = Path(__file__).resolve().parents[1]
FILES = ["gin/small_16k.gin", "gin/test/tiny_train.gin"]
ONE_STEP = {"Train.num_iterations": 1, "CheckpointConfig.every": 1, "Train.ema": None,
            "Train.val_dataset": None}


def tiny_encoding_of_empty_string() -> torch.Tensor:
    with torch.inference_mode():
        return get_clip(size="tiny").encode_text([""])[0].float()


def run_train(workspace: Path, out: Path, files=FILES, extra: tuple[str, ...] = (), **overrides) -> dict:
    params = train_params(workspace, out, **(ONE_STEP | overrides)) + list(extra)
    cli.run(files, params, [str(REPO)], dry_run=False)
    return io.load_torch(ckpt.list_checkpoints(out)[0])


def test_extraction_records_the_encoders_empty_string_and_the_store_stays_a_tensordict(example_workspace):
    expected = tiny_encoding_of_empty_string()
    for name in ("video-16k", "audio-16k"):
        store = example_workspace / "stores" / name
        recorded = null_text.read(store, (77, 1024))
        assert recorded is not None and torch.equal(recorded, expected), name
        td = TensorDict.load_memmap(store)  # the record is invisible to tensordict
        assert null_text.FILE_NAME not in td.keys() and "mean" in td.keys()


def test_small_16k_from_scratch_takes_the_tiny_encoders_empty_string(example_workspace, tmp_path):
    state = run_train(example_workspace, tmp_path / "run", extra=("get_network.name = 'small_16k'",))
    assert state["network"]["empty_string_feat"].shape == (77, 1024)
    assert torch.equal(state["network"]["empty_string_feat"], tiny_encoding_of_empty_string())


def test_weights_keep_their_own_empty_string(example_workspace, tmp_path):
    own = torch.randn(77, 1024, generator=torch.Generator().manual_seed(3))
    first = run_train(example_workspace, tmp_path / "first")
    first["network"]["empty_string_feat"] = own
    weights = tmp_path / "weights.pth"
    torch.save(first["network"], weights)
    state = run_train(example_workspace, tmp_path / "tuned", **{"CheckpointConfig.weights": str(weights)})
    assert torch.equal(state["network"]["empty_string_feat"], own)


def test_a_store_without_the_record_stops_the_run_and_the_named_command_adds_it(example_workspace, tmp_path):
    stores = tmp_path / "stores"
    shutil.copytree(example_workspace / "stores", stores)
    (stores / "audio-16k" / null_text.FILE_NAME).unlink()
    out = tmp_path / "run"
    params = train_params(example_workspace, out, **ONE_STEP) + [
        f"VIDEO_STORES = ['{stores / 'video-16k'}']", f"AUDIO_STORES = ['{stores / 'audio-16k'}']"]
    with pytest.raises(StoreError, match="no null-text record") as error:
        cli.run(FILES, params, [str(REPO)], dry_run=False)
    message = str(error.value)
    assert str(stores / "audio-16k") in message and str(stores / "video-16k") not in message
    assert "gin/record_null_text.gin" in message and "gin/vision/tiny.gin" in message
    assert not ckpt.list_checkpoints(out)  # stopped before any step

    cli.run(["gin/record_null_text.gin", "gin/vision/tiny.gin"], [f"STORES = ['{stores / 'audio-16k'}']"],
            [str(REPO)], dry_run=False)
    assert torch.equal(null_text.read(stores / "audio-16k"), tiny_encoding_of_empty_string())
    cli.run(FILES, params, [str(REPO)], dry_run=False)
    state = io.load_torch(ckpt.list_checkpoints(out)[0])
    assert torch.equal(state["network"]["empty_string_feat"], tiny_encoding_of_empty_string())


def test_record_null_text_refuses_to_replace_another_record_unless_told(example_workspace, tmp_path):
    store = tmp_path / "vgg"
    write_synthetic_store(store, "video", 2, null_text_seed=5)
    before = null_text.read(store)
    args = (["gin/record_null_text.gin", "gin/vision/tiny.gin"], [f"STORES = ['{store}']"], [str(REPO)])
    with pytest.raises(StoreError, match="RecordNullText.overwrite = True"):
        cli.run(*args, dry_run=False)
    assert torch.equal(null_text.read(store), before)
    cli.run(args[0], args[1] + ["RecordNullText.overwrite = True"], args[2], dry_run=False)
    assert torch.equal(null_text.read(store), tiny_encoding_of_empty_string())


def test_stores_of_different_text_encoders_are_refused(example_workspace, tmp_path):
    write_synthetic_store(tmp_path / "a", "video", 2, seed=1, null_text_seed=1)
    write_synthetic_store(tmp_path / "b", "audio", 2, seed=2, null_text_seed=2)
    params = train_params(example_workspace, tmp_path / "run", **ONE_STEP) + [
        f"VIDEO_STORES = ['{tmp_path / 'a'}']", f"AUDIO_STORES = ['{tmp_path / 'b'}']"]
    with pytest.raises(StoreError, match="null-text records of .* differ") as error:
        cli.run(FILES, params, [str(REPO)], dry_run=False)
    assert str(tmp_path / "a") in str(error.value) and str(tmp_path / "b") in str(error.value)


def test_a_corrupt_or_misshapen_record_names_its_file(tmp_path):
    store = tmp_path / "vgg"
    write_synthetic_store(store, "video", 2)
    path = null_text.record_path(store)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StoreError, match=f"{path} is unreadable"):
        null_text.read(store)
    null_text.write(store, torch.zeros(1, 77, 512))
    with pytest.raises(StoreError, match=r"has shape \(1, 77, 512\)"):
        null_text.read(store, (77, 1024))
