"""Synchformer visual branch: release key set, reference output with recipe weights, segmenting."""

from __future__ import annotations

import pytest
import torch

from mmgin.testing.recipe import read_manifest, recipe_state_dict
from mmgin.vision.synchformer import (
    SYNCHFORMER_SIZES,
    Synchformer,
    build_synchformer,
    get_synchformer,
    segment_video,
)


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return torch.load(fixtures_dir / "synchformer.pt", weights_only=True)


def test_state_dict_matches_release_manifest():
    with torch.device("meta"):
        model = Synchformer(SYNCHFORMER_SIZES["full"])
    state = model.state_dict()
    manifest = read_manifest("synchformer")
    assert list(state) == [entry.key for entry in manifest]
    assert [tuple(v.shape) for v in state.values()] == [entry.shape for entry in manifest]


def _reference_video(meta) -> torch.Tensor:
    """The fixture input, regenerated from its seed and checked against its checksum."""
    generator = torch.Generator().manual_seed(1007)
    video = torch.rand(1, 200, 3, 224, 224, generator=generator) * 2 - 1
    checksum = meta["input_checksum"]
    flat = video.flatten()
    assert flat[:8].tolist() == checksum["first8"] and flat[-8:].tolist() == checksum["last8"]
    assert video.double().sum().item() == pytest.approx(checksum["sum"], rel=1e-12)
    return video


def test_recipe_weights_reproduce_reference_features(fixture):
    """The first two segments (frames 0..23) give the reference's first 16 feature rows.

    All 24 segments take ~90 s on 2 cores; segment order and layout are tested separately.
    """
    model = build_synchformer(recipe_state_dict("synchformer"), "full", segment_batch=2)
    video = _reference_video(fixture["meta"])[:, :24]
    with torch.inference_mode():
        features = model(video)
    tolerance = fixture["meta"]["tolerances"]["features"]
    expected = fixture["outputs"]["features"][:, :16]
    torch.testing.assert_close(features, expected, rtol=tolerance["rtol"], atol=tolerance["atol"])


def test_segments_are_16_frames_with_step_8():
    video = torch.arange(40.0).view(1, 40, 1, 1, 1).expand(1, 40, 3, 2, 2)
    segments = segment_video(video)
    assert segments.shape == (1, 4, 16, 3, 2, 2)
    assert segments[0, :, :, 0, 0, 0].tolist() == [
        list(range(start, start + 16)) for start in (0, 8, 16, 24)
    ]
    assert segment_video(torch.zeros(1, 200, 3, 2, 2)).shape[1] == 24


def test_outputs_are_segment_major_and_chunking_invariant():
    """(B, S*8, D): rows 8s..8s+7 of video b are segment s of video b, for any segment_batch."""
    model = get_synchformer(size="tiny", segment_batch=3)  # chunks [3, 1] cross the videos
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(2, 24, 3, 224, 224, generator=generator) * 2 - 1
    with torch.inference_mode():
        features = model(video)
        assert features.shape == (2, 16, 768)
        assert not torch.allclose(features[0, :8], features[0, 8:], atol=1e-3)
        for b in range(2):
            for s in range(2):
                one = model.vfeat_extractor(video[b : b + 1, 8 * s : 8 * s + 16])
                torch.testing.assert_close(features[b, 8 * s : 8 * s + 8], one[0], rtol=1e-5, atol=1e-6)


def test_tiny_checkpoint_round_trip_and_bad_files(tmp_path):
    tiny = get_synchformer(size="tiny")
    state = {k: v + 0.01 for k, v in tiny.state_dict().items()}
    state["afeat_extractor.unused"] = torch.zeros(3)  # whole-Synchformer files carry more keys
    torch.save(state, tmp_path / "sync.pth")
    loaded = get_synchformer(tmp_path / "sync.pth", size="tiny")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training

    with pytest.raises(ValueError, match="does not fit"):
        get_synchformer(tmp_path / "sync.pth", size="full")
    torch.save({"afeat_extractor.unused": torch.zeros(3)}, tmp_path / "audio_only.pth")
    with pytest.raises(ValueError, match="vfeat_extractor"):
        get_synchformer(tmp_path / "audio_only.pth", size="tiny")
    with pytest.raises(ValueError, match="unknown Synchformer size"):
        get_synchformer(size="huge")


def test_rejects_wrong_frame_size():
    with pytest.raises(ValueError, match="224"):
        get_synchformer(size="tiny")(torch.zeros(1, 16, 3, 112, 112))


def test_missing_release_file_says_how_to_get_it(tmp_path, monkeypatch):
    from mmgin import weights

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(weights.MissingWeightsError, match="synchformer_state_dict.pth"):
        get_synchformer()
