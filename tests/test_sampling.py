"""One sampler: Train's validation samples and Evaluate's generation give the same latents,
and through the programs the same audio files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmgin import cli
from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.eval.sources import StoreSource
from mmgin.model import FlowMatching, MMAudio, SequenceConfig, get_network
from mmgin.model.sampling import Conditions, fill_empty, generate_latents
from mmgin.testing.example import write_synthetic_store
from mmgin.train import checkpoint as ckpt
from mmgin.train.batches import to_device

REPO = Path(__file__).resolve().parents[1]

ROWS = [2, 0, 1]  # out of order, as a shard of a validation set may be


@pytest.fixture(scope="module")
def network() -> MMAudio:
    """tiny_16k with finite statistics and a null text, as any trained network has."""
    generator = torch.Generator().manual_seed(1)
    return get_network("tiny_16k", latent_mean=torch.randn(20, generator=generator),
                       latent_std=torch.rand(20, generator=generator) + 0.5,
                       empty_string_feat=torch.randn(77, 1024, generator=generator)).eval()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    for kind in ("video", "audio"):
        write_synthetic_store(root / kind, kind, num_rows=3)
    return {"video": root / "video", "audio": root / "audio"}


def _train_conditions(store: Path, kind: str, seq: SequenceConfig) -> Conditions:
    """A validation batch as Train takes it: the dataset's rows, moved by the trainer."""
    dataset_class = ExtractedVideoDataset if kind == "video" else ExtractedAudioDataset
    dataset = dataset_class(store, latent_seq_len=seq.latent_seq_len, clip_seq_len=seq.clip_seq_len,
                            sync_seq_len=seq.sync_seq_len)
    return Conditions.from_batch(to_device(dataset.__getitems__(ROWS), torch.device("cpu")))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["video", "audio"])
def test_validation_and_evaluate_sample_the_same_latents(network, stores, kind, precision):
    seq = SequenceConfig.for_mode("16k", 8.0)
    flow = FlowMatching(num_steps=2)
    evaluated = StoreSource(stores[kind], seq).prepare(ROWS).conditions
    validated = _train_conditions(stores[kind], kind, seq)
    latents = [generate_latents(network, flow, conditions, torch.Generator().manual_seed(7), 4.5, precision)
               for conditions in (validated, evaluated)]
    assert latents[0].shape == (3, network.latent_seq_len, network.latent_dim)
    assert latents[0].dtype == torch.float32 and torch.isfinite(latents[0]).all()
    assert torch.equal(latents[0], latents[1])


def test_absent_modalities_take_the_learnt_empty_features(network, stores):
    seq = SequenceConfig.for_mode("16k", 8.0)
    conditions = _train_conditions(stores["audio"], "audio", seq)
    conditions.text_exist = torch.tensor([True, False, True])
    clip, sync, text = fill_empty(network, conditions)
    assert torch.equal(clip, network.get_empty_clip_sequence(3))
    assert torch.equal(sync, network.get_empty_sync_sequence(3))
    assert torch.equal(text[1], network.empty_string_feat)
    assert torch.equal(text[0], conditions.text[0])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_samples_and_evaluate_write_the_same_audio(tmp_path, precision):
    """Through the programs: Train's samples at its last step and Evaluate with that step's
    checkpoint (same seed, batch size, precision and steps) write the same flac files."""
    stores = tmp_path / "stores"
    write_synthetic_store(stores / "video-16k", "video", num_rows=4, seed=1)
    write_synthetic_store(stores / "val-16k", "video", num_rows=3, seed=2)
    run, out, seed = tmp_path / "run", tmp_path / "eval", 7
    train = {"VIDEO_STORES": [str(stores / "video-16k")], "AUDIO_STORES": [], "VAL_STORE": str(stores / "val-16k"),
             "OUTPUT_DIR": str(run), "Train.seed": seed, "Train.num_iterations": 2, "Train.ema": None,
             "StepConfig.precision": precision, "CheckpointConfig.every": 2,
             "SamplingConfig.every": 2, "SamplingConfig.num_samples": 3, "SamplingConfig.batch_size": 2}
    cli.run(["gin/small_16k.gin", "gin/test/tiny_train.gin"], _bindings(train), [str(REPO)], dry_run=False)
    evaluate = {"NETWORK": "tiny_16k", "WEIGHTS": str(ckpt.checkpoint_path(run, 2)), "OUTPUT_DIR": str(out),
                "STORE": str(stores / "val-16k"), "Evaluate.seed": seed, "Evaluate.batch_size": 2,
                "Evaluate.precision": precision, "FlowMatching.num_steps": 2, "launch.device": "cpu"}
    cli.run(["gin/evaluate_16k.gin", "gin/audio/tiny.gin"], _bindings(evaluate), [str(REPO)], dry_run=False)
    sampled = sorted((run / "samples" / f"{2:09d}").glob("*.flac"))
    assert len(sampled) == 3
    for path in sampled:
        assert path.read_bytes() == (out / "test-sampled" / path.name).read_bytes(), path.name


def _bindings(values: dict) -> list[str]:
    return [f"{k} = {v!r}" for k, v in values.items()]
