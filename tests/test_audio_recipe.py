"""Released-format checkpoints with the deterministic recipe weights reproduce the reference
fixtures: VAE encode/decode (16k, 44k) and both vocoders, loaded through the public loaders."""

from __future__ import annotations

import json

import pytest
import torch

from mmgin.audio import AudioCodec, get_vae, get_vocoder
from mmgin.audio.alias_free import Activation1d
from mmgin.audio.bigvgan import BIGVGAN_16K, BIGVGAN_V2_44K, BigVGAN
from mmgin.testing.recipe import recipe_state_dict


def _fixture(fixtures_dir, name: str) -> dict:
    return torch.load(fixtures_dir / f"{name}.pt", weights_only=True)


def _assert_matches(actual: torch.Tensor, fixture: dict, name: str) -> None:
    torch.testing.assert_close(actual, fixture["outputs"][name], **fixture["meta"]["tolerances"][name])


def _filters(config) -> dict[str, torch.Tensor]:
    """Constructor values of the alias-free filter buffers (the recipe keeps them)."""
    with torch.device("meta"):
        names = [k for k in BigVGAN(config).state_dict() if k.endswith(".filter")]
    activation = Activation1d(1).state_dict()  # every activation builds the same two filters
    return {k: activation["downsample.lowpass.filter" if "lowpass" in k else "upsample.filter"] for k in names}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Recipe checkpoints in the released container formats, written once for this module.

    Whoever loads one deletes it: together they are gigabytes on a shared disk."""
    root = tmp_path_factory.mktemp("recipe_weights")
    torch.save(recipe_state_dict("vae_v1_16"), root / "v1-16.pth")
    torch.save({"generator": recipe_state_dict("bigvgan_16k", fixed=_filters(BIGVGAN_16K))}, root / "best_netG.pt")
    v2_dir = root / "bigvgan_v2_44khz_128band_512x"
    v2_dir.mkdir()
    torch.save({"generator": recipe_state_dict("bigvgan_v2_44k", fixed=_filters(BIGVGAN_V2_44K))},
               v2_dir / "bigvgan_generator.pt")
    hub_config = {  # generator fields of the Hub config.json (plus some training-only ones)
        "resblock": "1", "num_mels": 128, "upsample_rates": [8, 4, 2, 2, 2, 2],
        "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4], "upsample_initial_channel": 1536,
        "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "activation": "snakebeta", "snake_logscale": True, "use_tanh_at_final": False,
        "use_bias_at_final": False, "sampling_rate": 44100, "n_fft": 2048, "hop_size": 512,
        "win_size": 2048, "fmin": 0, "fmax": None, "learning_rate": 0.0001, "batch_size": 32,
    }
    (v2_dir / "config.json").write_text(json.dumps(hub_config))
    return root


@pytest.fixture(scope="module")
def codec_16k(checkpoints):
    codec = AudioCodec(mode="16k", vae_checkpoint=checkpoints / "v1-16.pth",
                       vocoder_checkpoint=checkpoints / "best_netG.pt")
    (checkpoints / "v1-16.pth").unlink()
    (checkpoints / "best_netG.pt").unlink()
    return codec


def test_vae_16k_matches_reference(codec_16k, fixtures_dir):
    fixture = _fixture(fixtures_dir, "vae_16k")
    with torch.inference_mode():
        mean, std = codec_16k.encode_waveform(fixture["inputs"]["waveform"])
        decoded = codec_16k.decode_mel(fixture["inputs"]["latent"])
    _assert_matches(mean, fixture, "mean")
    _assert_matches(std, fixture, "std")
    _assert_matches(decoded, fixture, "decoded_mel")


def test_bigvgan_16k_matches_reference(codec_16k, fixtures_dir):
    fixture = _fixture(fixtures_dir, "bigvgan_16k")
    with torch.inference_mode():
        waveform = codec_16k.vocoder(fixture["inputs"]["mel"])
    _assert_matches(waveform, fixture, "waveform")


def test_end_to_end_16k(codec_16k):
    """waveform -> mel -> VAE posterior -> decode -> vocoder, on a short clip."""
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(4096) / 16000
    waveform = (0.5 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(4096, generator=generator))[None]
    with torch.inference_mode():
        mean, std = codec_16k.encode_waveform(waveform)
        assert mean.shape == std.shape == (1, 8, 20)
        audio = codec_16k.decode_latent(mean + std * torch.randn(mean.shape, generator=generator))
    assert audio.shape == (1, 4096) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and 0.01 < float(audio.std()) and float(audio.abs().max()) <= 1.0


def test_vae_44k_matches_reference(checkpoints, fixtures_dir):
    torch.save(recipe_state_dict("vae_v1_44"), checkpoints / "v1-44.pth")
    vae = get_vae("44k", checkpoint=checkpoints / "v1-44.pth")
    (checkpoints / "v1-44.pth").unlink()
    fixture = _fixture(fixtures_dir, "vae_44k")
    with torch.inference_mode():
        posterior = vae.encode(fixture["inputs"]["mel"])
        decoded = vae.decode(fixture["inputs"]["latent"].transpose(1, 2))
    _assert_matches(posterior.mean.transpose(1, 2), fixture, "mean")
    _assert_matches(posterior.std.transpose(1, 2), fixture, "std")
    _assert_matches(decoded, fixture, "decoded_mel")


def test_bigvgan_v2_44k_matches_reference(checkpoints, fixtures_dir):
    fixture = _fixture(fixtures_dir, "bigvgan_v2_44k")
    vocoder_dir = checkpoints / "bigvgan_v2_44khz_128band_512x"
    vocoder = get_vocoder("44k", checkpoint=vocoder_dir)
    assert vocoder.hop_size == 512 and vocoder.conv_post.bias is None
    with torch.inference_mode():
        waveform = vocoder(fixture["inputs"]["mel"])
    _assert_matches(waveform, fixture, "waveform")
