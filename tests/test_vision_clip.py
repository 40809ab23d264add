"""CLIP encoder: release key set, tokenizer ids, reference features with recipe weights (full
ViT-H-14-378 architecture), tiny variant checkpoint and empty-string handling."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

import open_clip
import pytest
import torch

from mmgin.testing.recipe import read_manifest, recipe_tensor
from mmgin.vision.clip import _build_open_clip, build_clip, get_clip
from mmgin.vision.clip_forms import BatchFirstSelfAttention, PatchEmbedding, use_gemm_forms


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return torch.load(fixtures_dir / "clip.pt", weights_only=True)


@pytest.fixture(scope="module")
def full_clip():
    """The 986M-parameter model with recipe weights, built once and freed after the module."""
    manifest = read_manifest("clip_dfn5b_vit_h_14_384")
    with ThreadPoolExecutor(max_workers=2) as pool:  # per-key generators: order-independent
        values = pool.map(lambda entry: recipe_tensor(entry.key, entry.shape), manifest)
        state = {entry.key: value for entry, value in zip(manifest, values)}
    encoder = build_clip(state, "full", frame_batch=1)
    del state
    yield encoder
    del encoder
    gc.collect()


@pytest.fixture(scope="module")
def tiny_clip():
    return get_clip(size="tiny")


def test_state_dict_matches_release_manifest():
    state = _build_open_clip("full").state_dict()
    manifest = read_manifest("clip_dfn5b_vit_h_14_384")
    assert list(state) == [entry.key for entry in manifest]
    assert [tuple(v.shape) for v in state.values()] == [entry.shape for entry in manifest]


def test_tokenizer_ids_equal_reference(tiny_clip, fixture):
    encoder = tiny_clip
    assert isinstance(encoder.tokenizer, open_clip.tokenizer.SimpleTokenizer)  # bundled BPE
    tokens = encoder.tokenize(fixture["meta"]["captions"])
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, fixture["inputs"]["tokens"])


def test_recipe_weights_reproduce_reference_image_features(full_clip, fixture):
    """The first of the two reference frames (one ViT-H/14 pass at 384 px takes ~15 s on
    2 cores); batching and chunking over frames are tested on the tiny model."""
    with torch.inference_mode():
        features = full_clip.encode_frames(fixture["inputs"]["clip_video"][:, :1])
    tolerance = fixture["meta"]["tolerances"]["image_features"]
    expected = fixture["outputs"]["image_features"][:, :1]
    torch.testing.assert_close(features, expected, rtol=tolerance["rtol"], atol=tolerance["atol"])


def test_recipe_weights_reproduce_reference_text_features(full_clip, fixture):
    """All three captions; the third ('') is MMAudio's empty-string feature."""
    with torch.inference_mode():
        features = full_clip.encode_text(fixture["meta"]["captions"])
    tolerance = fixture["meta"]["tolerances"]["text_features"]
    expected = fixture["outputs"]["text_features"]
    torch.testing.assert_close(features, expected, rtol=tolerance["rtol"], atol=tolerance["atol"])


def test_tiny_shapes_norms_and_chunking(tiny_clip):
    encoder = tiny_clip
    frames = torch.rand(2, 5, 3, 384, 384, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = encoder.encode_frames(frames)
        encoder.frame_batch = 2
        chunked = encoder.encode_frames(frames)
        encoder.frame_batch = 64
        text = encoder.encode_text(["a dog barks", ""])
    assert chunked.shape == (2, 5, 1024) and text.shape == (2, 77, 1024)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.norm(dim=-1), torch.ones(2, 5))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2, 77))
    assert not torch.allclose(chunked[0, 0], chunked[0, 1])
    # Causal: the '' caption and 'a dog barks' share only the start token's feature.
    torch.testing.assert_close(text[0, 0], text[1, 0])
    assert not torch.allclose(text[0, 1], text[1, 1])


def test_tiny_checkpoint_and_empty_string_files(tiny_clip, tmp_path):
    tiny = tiny_clip
    state = {k: v * 1.5 for k, v in tiny.model.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "clip.bin")
    loaded = get_clip(tmp_path / "clip.bin", size="tiny")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training

    empty = torch.randn(1, 77, 1024)
    torch.save(empty, tmp_path / "empty_string.pth")
    with_file = get_clip(size="tiny", empty_string_path=tmp_path / "empty_string.pth")
    assert torch.equal(with_file.empty_string_feature(), empty)
    with torch.inference_mode():
        torch.testing.assert_close(tiny.empty_string_feature(), tiny.encode_text([""]))

    with pytest.raises(ValueError, match="does not fit"):
        get_clip(tmp_path / "clip.bin", size="full")


def test_missing_release_file_says_how_to_get_it(tmp_path, monkeypatch):
    from mmgin import weights

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(weights.MissingWeightsError, match="open_clip_pytorch_model.bin"):
        get_clip()


def test_gemm_forms_keep_the_release_keys_and_the_function():
    """The image tower's swapped attention and patch embedding (clip_forms) keep every key and
    parameter of the release and compute what open_clip's own modules compute."""
    encoder = get_clip(size="tiny")
    assert isinstance(encoder.model.visual.conv1, PatchEmbedding)
    assert all(isinstance(b.attn, BatchFirstSelfAttention) for b in encoder.model.visual.transformer.resblocks)
    plain = _build_open_clip("tiny")
    plain.load_state_dict(encoder.model.state_dict(), assign=True)  # open_clip's own modules
    assert list(plain.state_dict()) == list(encoder.model.state_dict())
    full_keys = [entry.key for entry in read_manifest("clip_dfn5b_vit_h_14_384")]
    with torch.device("meta"):
        full = _build_open_clip("full")
        use_gemm_forms(full.visual)
    assert list(full.state_dict()) == full_keys
    frames = torch.rand(3, 3, 378, 378, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        swapped = encoder.model.encode_image(frames)
        original = plain.encode_image(frames)
        torch.testing.assert_close(swapped, original, rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", torch.bfloat16):
            low_swapped, low_original = encoder.model.encode_image(frames), plain.encode_image(frames)
    assert (low_swapped.float() - original).norm() / original.norm() < 3e-2  # bf16 rounding only
    torch.testing.assert_close(low_swapped.float(), low_original.float(), rtol=2e-2, atol=2e-2)


def test_patch_embedding_equals_the_convolution_it_replaces():
    conv = torch.nn.Conv2d(3, 16, kernel_size=14, stride=14, bias=False)
    images = torch.randn(2, 3, 378, 378)
    with torch.no_grad():
        torch.testing.assert_close(PatchEmbedding(conv)(images), conv(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="non-overlapping"):
        PatchEmbedding(torch.nn.Conv2d(3, 16, kernel_size=14, stride=7, bias=False))
