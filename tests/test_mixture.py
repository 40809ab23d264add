"""The training mixture with a rate per store, the validation store of either kind, and the
runnable configs training audio-only or video-only, on real stores and real runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmgin import cli
from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.data.loader import DistributedBatchLoader
from mmgin.data.mixture import DatasetMixture
from mmgin.testing.example import train_params, write_synthetic_store
from mmgin.data.training_sets import training_mixture, validation_dataset

REPO = Path(__file__).resolve().parents[1]
FILES = ["gin/small_16k.gin", "gin/test/tiny_train.gin"]
LATENT = (8, 4)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixture_stores")
    write_synthetic_store(root / "vgg", "video", 10, latent_shape=LATENT, seed=1)
    write_synthetic_store(root / "caps", "audio", 7, latent_shape=LATENT, seed=2)
    write_synthetic_store(root / "clotho", "audio", 4, latent_shape=LATENT, seed=3)
    return root


def mixture(root: Path, **kwargs) -> DatasetMixture:
    return training_mixture(video_stores=[root / "vgg"], audio_stores=[root / "caps", root / "clotho"], **kwargs)


def epoch_counts(data: DatasetMixture, epoch: int = 0) -> Counter:
    loader = DistributedBatchLoader(data, batch_size=len(data), seed=3, rank=0, world_size=1, num_workers=0)
    loader.set_epoch(epoch)
    (batch,) = list(loader)
    return Counter(batch["id"])


def test_integer_rates_repeat_each_store_and_keep_the_concatenated_index_space(stores):
    data = mixture(stores, video_oversample=5, rates={"clotho": 2})
    assert [d.name for d in data.datasets] == ["vgg", "caps", "clotho"]
    assert data.passes == 1 and data.repeats == [5, 1, 2]
    assert len(data) == 10 * 5 + 7 + 4 * 2
    # the index space is the concatenation of the repeated stores, in mixture order
    expected = [(0, r) for _ in range(5) for r in range(10)] + [(1, r) for r in range(7)] + \
        [(2, r) for _ in range(2) for r in range(4)]
    part, row = data.locate(torch.arange(len(data)))
    assert list(zip(part.tolist(), row.tolist())) == expected
    counts = epoch_counts(data)
    assert {counts[i] for i in data.datasets[0].store.ids} == {5}
    assert {counts[i] for i in data.datasets[1].store.ids} == {1}
    assert {counts[i] for i in data.datasets[2].store.ids} == {2}
    # an explicit rate wins over video_oversample
    assert mixture(stores, video_oversample=5, rates={"vgg": 3}).repeats == [3, 1, 1]


def test_fractional_rates_are_exact_over_whole_passes_and_resume(stores):
    data = mixture(stores, rates={"vgg": 2.5, "caps": 0.5})
    assert data.passes == 2 and data.repeats == [5, 1, 2]
    assert len(data) == 10 * 5 + 7 + 4 * 2
    for epoch in (0, 1):  # every row of a store equally often, every epoch
        counts = epoch_counts(data, epoch)
        assert [sorted({counts[i] for i in d.store.ids}) for d in data.datasets] == [[5], [1], [2]]
    assert mixture(stores, rates={"caps": 0.1}).passes == 10

    def loader(dataset):
        return DistributedBatchLoader(dataset, batch_size=4, seed=7, rank=1, world_size=2, num_workers=0)

    first = loader(data)
    epoch0 = [batch["id"] for batch in first]
    assert [batch["id"] for batch in loader(data)] == epoch0  # deterministic
    run = iter(first)  # epoch 1, stopped after 3 batches
    head = [next(run)["id"] for _ in range(3)]
    state = first.state_dict()
    rest = [batch["id"] for batch in run]
    assert head + rest != epoch0
    resumed = loader(mixture(stores, rates={"vgg": 2.5, "caps": 0.5}))  # a new process's mixture
    resumed.load_state_dict(state)
    assert [batch["id"] for batch in resumed] == rest


def test_bad_rates_and_names_are_errors_naming_the_stores(stores):
    with pytest.raises(ValueError, match=r"name clothoo, which are not in the mixture \(stores: vgg, caps, clotho\)"):
        mixture(stores, rates={"clothoo": 2})
    for rate in (0, -1, float("inf"), "2", True):
        with pytest.raises(ValueError, match="the rate of caps is"):
            mixture(stores, rates={"caps": rate})
    with pytest.raises(ValueError, match="need 100 passes per epoch.*steps of 0.05"):
        mixture(stores, rates={"caps": 0.37})
    with pytest.raises(ValueError, match="no store to train on"):
        training_mixture(video_stores=[], audio_stores=[])
    with pytest.raises(ValueError, match="is a audio store"):
        training_mixture(video_stores=[stores / "caps"])


def test_describe_lists_rows_rates_and_shares(stores):
    lines = mixture(stores, video_oversample=2.5).describe().splitlines()
    assert lines[0] == ("training mixture: 72 samples per epoch (2 passes: exact for the fractional "
                        "rates), drawn uniformly")
    assert [line.split() for line in lines[2:]] == [
        ["vgg", "video", "10", "2.5", "50", "69.4%"],
        ["caps", "audio", "7", "1", "14", "19.4%"],
        ["clotho", "audio", "4", "1", "8", "11.1%"],
    ]


def test_validation_dataset_opens_either_kind_or_none(stores):
    assert validation_dataset(None) is None
    assert isinstance(validation_dataset(stores / "vgg"), ExtractedVideoDataset)
    audio = validation_dataset(str(stores / "caps"))
    assert isinstance(audio, ExtractedAudioDataset) and len(audio) == 7
    with pytest.raises(ValueError, match="give one store path"):
        validation_dataset([stores / "caps"])


def test_video_only_config_builds_without_a_validation_store(example_workspace, tmp_path):
    params = train_params(example_workspace, tmp_path / "out", AUDIO_STORES=[])
    params = [p for p in params if not p.startswith("VAL_STORE")]
    assert cli.run(FILES, params, [str(REPO)], dry_run=True) == 0


def test_empty_mixture_config_is_an_error(example_workspace, tmp_path):
    params = train_params(example_workspace, tmp_path / "out", VIDEO_STORES=[], AUDIO_STORES=[])
    with pytest.raises(ValueError, match="set VIDEO_STORES and/or AUDIO_STORES"):
        cli.run(FILES, params, [str(REPO)], dry_run=True)


def test_audio_only_run_validates_on_an_audio_store_and_logs_the_mixture(example_workspace, tmp_path):
    stores = example_workspace / "stores"
    out = tmp_path / "out"
    params = train_params(example_workspace, out, VIDEO_STORES=[], VAL_STORE=str(stores / "audio-16k"),
                          **{"training_mixture.rates": {"audio-16k": 1.5}, "Train.num_iterations": 2,
                             "SamplingConfig.every": 2, "CheckpointConfig.every": 2})
    assert cli.run(FILES, params, [str(REPO)], dry_run=False) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    text = events.Tensors("data/mixture/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "training mixture: 12 samples per epoch (2 passes" in text
    assert "audio-16k" in text and "100.0%" in text and "video-16k" not in text
    (loss,) = events.Scalars("val/loss")
    assert torch.isfinite(torch.tensor(loss.value))
    flacs = sorted((out / "samples" / "000000002").glob("*.flac"))
    assert len(flacs) == 2


def test_stores_named_alike_but_for_a_dot_are_distinct_sets_with_their_own_rates(tmp_path):
    write_synthetic_store(tmp_path / "vgg", "video", 3, seed=1)
    write_synthetic_store(tmp_path / "vgg.v2", "video", 2, seed=2)
    mixture = training_mixture([tmp_path / "vgg", tmp_path / "vgg.v2"], [], video_oversample=1, rates={"vgg.v2": 3})
    assert [d.name for d in mixture.datasets] == ["vgg", "vgg.v2"]
    assert len(mixture) == 3 + 2 * 3
