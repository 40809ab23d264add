"""The distributed batch loader and the dataset mixture, on small synthetic stores."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from mmgin.data.datasets import ExtractedAudioDataset, ExtractedVideoDataset
from mmgin.data.loader import DistributedBatchLoader
from mmgin.data.mixture import DatasetMixture
from mmgin.data.store import StoreFormat
from mmgin.testing.example import write_synthetic_store

LATENT = (8, 4)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader_stores")
    video = write_synthetic_store(root / "vgg", "video", 10, latent_shape=LATENT, seed=1)
    audio = write_synthetic_store(root / "caps", "audio", 7, latent_shape=LATENT, seed=2)
    return root, video, audio


def _ids(batches):
    return [batch["id"] for batch in batches]


def test_order_is_deterministic_and_changes_with_epoch(stores):
    root, _, _ = stores
    dataset = ExtractedVideoDataset(store=root / "vgg")
    first = DistributedBatchLoader(dataset, batch_size=3, seed=5, rank=0, world_size=1, num_workers=0)
    second = DistributedBatchLoader(dataset, batch_size=3, seed=5, rank=0, world_size=1, num_workers=2)
    processes = DistributedBatchLoader(dataset, batch_size=3, seed=5, rank=0, world_size=1, num_workers=2,
                                       workers="processes")
    epoch0 = _ids(first)
    assert len(epoch0) == len(first) == 3  # 10 // 3, last partial batch dropped
    assert epoch0 == _ids(second)
    by_threads, by_processes = list(DistributedBatchLoader(dataset, batch_size=3, seed=5, rank=0, world_size=1,
                                                           num_workers=3)), list(processes)
    assert _ids(by_processes) == epoch0
    for threaded, forked in zip(by_threads, by_processes):  # same bytes either way
        assert all(torch.equal(threaded[k], forked[k]) for k in threaded if isinstance(threaded[k], torch.Tensor))
    assert first.epoch == 1
    epoch1 = _ids(first)
    assert epoch1 != epoch0
    second.set_epoch(1)
    assert _ids(second) == epoch1


def test_two_ranks_take_disjoint_slices_that_cover_the_epoch(stores):
    root, _, _ = stores
    dataset = ExtractedVideoDataset(store=root / "vgg")
    per_rank = [
        [i for batch in DistributedBatchLoader(dataset, batch_size=5, seed=3, rank=r, world_size=2,
                                               num_workers=0) for i in batch["id"]]
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 5
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == set(dataset.store.ids)


def test_resume_mid_epoch_gives_exactly_the_remaining_batches(stores):
    root, video, _ = stores
    dataset = ExtractedVideoDataset(store=root / "vgg")
    make = lambda: DistributedBatchLoader(dataset, batch_size=2, seed=11, rank=0, world_size=1, num_workers=2)
    uninterrupted = list(make())
    interrupted = make()
    seen = []
    for batch in interrupted:
        seen.append(batch)
        if len(seen) == 2:
            break
    state = interrupted.state_dict()
    assert state["batches_done"] == 2
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert _ids(seen + rest) == _ids(uninterrupted)
    for got, want in zip(seen + rest, uninterrupted):
        assert torch.equal(got["a_mean"], want["a_mean"])
    # the batch content is the store's rows, in float32
    index = dataset.store.ids.index(uninterrupted[0]["id"][0])
    assert torch.equal(uninterrupted[0]["a_mean"][0], video["mean"][index])
    other = DistributedBatchLoader(dataset, batch_size=2, seed=11, rank=0, world_size=2, num_workers=0)
    with pytest.raises(ValueError, match="world_size was 1 and is now 2"):
        other.load_state_dict(state)


def test_mixture_oversamples_and_marks_modalities(stores):
    root, video, audio = stores
    mixture = DatasetMixture(
        video_sets=[ExtractedVideoDataset(store=root / "vgg")],
        audio_sets=[ExtractedAudioDataset(store=root / "caps")],
        rates={"vgg": 3},
    )
    assert len(mixture) == 10 * 3 + 7
    loader = DistributedBatchLoader(mixture, batch_size=37, seed=0, rank=0, world_size=1, num_workers=1)
    (batch,) = list(loader)
    counts = Counter(batch["id"])
    assert all(counts[i] == 3 for i in mixture.video_sets[0].store.ids)
    assert all(counts[i] == 1 for i in mixture.audio_sets[0].store.ids)
    is_video = torch.tensor([i.startswith("video") for i in batch["id"]])
    assert torch.equal(batch["video_exist"], is_video)
    assert not batch["clip_features"][~is_video].any() and batch["clip_features"][is_video].abs().sum() > 0
    assert batch["a_mean"].shape == (37,) + LATENT

    mean, std = mixture.latent_statistics(chunk_rows=3)
    flat = video["mean"].reshape(-1, LATENT[1]).double()
    torch.testing.assert_close(mean, flat.mean(0).float())
    torch.testing.assert_close(std, flat.std(0).float())
    audio_only = DatasetMixture(audio_sets=[ExtractedAudioDataset(store=root / "caps")])
    torch.testing.assert_close(audio_only.latent_statistics()[0],
                               audio["mean"].reshape(-1, LATENT[1]).double().mean(0).float())
    with pytest.raises(ValueError, match="not in the mixture"):
        DatasetMixture(video_sets=[ExtractedVideoDataset(store=root / "vgg")], rates={"vggsound": 5})


def test_without_drop_last_ranks_get_equal_batches_covering_everything(stores):
    root, _, _ = stores
    dataset = ExtractedVideoDataset(store=root / "vgg")  # 10 rows over 3 ranks: 2 repeats
    per_rank = [list(DistributedBatchLoader(dataset, batch_size=3, seed=2, rank=r, world_size=3, num_workers=0,
                                            drop_last=False)) for r in range(3)]
    assert [len(batches) for batches in per_rank] == [2, 2, 2]
    ids = [i for batches in per_rank for batch in batches for i in batch["id"]]
    assert len(ids) == 12 and set(ids) == set(dataset.store.ids)


def test_getitems_returns_the_order_asked_for(stores):
    root, video, audio = stores
    videos = ExtractedVideoDataset(store=root / "vgg")
    batch = videos.__getitems__([7, 2, 9, 2])
    assert batch["id"] == [videos.store.ids[i] for i in (7, 2, 9, 2)]
    assert torch.equal(batch["a_mean"], video["mean"][[7, 2, 9, 2]])
    mixture = DatasetMixture(video_sets=[videos], audio_sets=[ExtractedAudioDataset(store=root / "caps")])
    batch = mixture.__getitems__([12, 3, 10, 0])  # audio rows 2 and 0, video rows 3 and 0
    assert batch["id"] == [mixture.audio_sets[0].store.ids[2], videos.store.ids[3],
                           mixture.audio_sets[0].store.ids[0], videos.store.ids[0]]
    assert batch["video_exist"].tolist() == [False, True, False, True]
    assert torch.equal(batch["a_std"][1], video["std"][3]) and torch.equal(batch["a_std"][2], audio["std"][0])


def test_batches_keep_the_storage_dtype_and_a_mixed_mixture_promotes(stores, tmp_path):
    """bf16 features leave the workers as bf16 (half the bytes to pin and copy); a mixture of a
    float32 (reference layout) store and a bf16 store yields float32, losing nothing."""
    root, video, audio = stores
    bf16_videos = ExtractedVideoDataset(store=root / "vgg")
    captions = ExtractedAudioDataset(store=root / "caps")
    batch = DatasetMixture(video_sets=[bf16_videos], audio_sets=[captions]).__getitems__([12, 3])
    assert batch["clip_features"].dtype == batch["text_features"].dtype == torch.bfloat16
    assert batch["a_mean"].dtype == torch.float32
    assert torch.equal(batch["clip_features"][1], video["clip_features"][3].bfloat16())

    reference = write_synthetic_store(tmp_path / "ref", "video", 4, latent_shape=LATENT, seed=3,
                                      store_format=StoreFormat.reference())
    mixed = DatasetMixture(video_sets=[ExtractedVideoDataset(store=tmp_path / "ref"), bf16_videos])
    batch = mixed.__getitems__([0, 5])  # reference row 0, bf16 row 1
    assert batch["clip_features"].dtype == batch["text_features"].dtype == torch.float32
    assert torch.equal(batch["clip_features"][0], reference["clip_features"][0])
    assert torch.equal(batch["clip_features"][1], video["clip_features"][1].bfloat16().float())
