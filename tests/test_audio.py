"""Audio components: manifest-exact state dicts, mel fixtures, tiny codec, loaders and their errors."""

from __future__ import annotations

import gin
import pytest
import torch

from mmgin.audio import AudioCodec, get_mel_converter, get_vae, get_vocoder
from mmgin.audio.bigvgan import BIGVGAN_16K, BIGVGAN_V2_44K, BigVGAN, fuse_weight_norm, released_state_dict
from mmgin.audio.loading import VOCODER_CONFIGS
from mmgin.audio.mel import slaney_mel_basis
from mmgin.audio.vae import VAE, VAE_CONFIGS
from mmgin.testing.recipe import read_manifest
from mmgin.weights import CorruptWeightsError


def _keys_shapes(state: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items()]


@pytest.mark.parametrize("mode,manifest", [("16k", "vae_v1_16"), ("44k", "vae_v1_44")])
def test_vae_state_dict_equals_manifest(mode, manifest):
    with torch.device("meta"):
        vae = VAE(VAE_CONFIGS[(mode, "full")])
    assert _keys_shapes(vae.state_dict()) == [(e.key, e.shape) for e in read_manifest(manifest)]


@pytest.mark.parametrize("config,manifest", [(BIGVGAN_16K, "bigvgan_16k"), (BIGVGAN_V2_44K, "bigvgan_v2_44k")])
def test_vocoder_file_layout_equals_manifest(config, manifest):
    with torch.device("meta"):
        vocoder = BigVGAN(config)
    released = released_state_dict(vocoder)
    assert _keys_shapes(released) == [(e.key, e.shape) for e in read_manifest(manifest)]
    # After folding the weight norm, the file keys are exactly the module's keys.
    assert sorted(_keys_shapes(fuse_weight_norm(released))) == sorted(_keys_shapes(vocoder.state_dict()))


def test_weight_norm_fold_matches_torch_weight_norm():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(3, 5, 4))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(1.7)
    state = {k: v for k, v in conv.state_dict().items()}
    fused = fuse_weight_norm(state)
    torch.testing.assert_close(fused["weight"], conv.weight, rtol=0, atol=0)
    legacy = {
        "weight_g": state["parametrizations.weight.original0"],
        "weight_v": state["parametrizations.weight.original1"],
    }
    torch.testing.assert_close(fuse_weight_norm(legacy)["weight"], conv.weight, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_mel_matches_reference(mode, fixtures_dir):
    fixture = torch.load(fixtures_dir / f"mel_{mode}.pt", weights_only=True)
    mel = get_mel_converter(mode)(fixture["inputs"]["waveform"])
    torch.testing.assert_close(mel, fixture["outputs"]["mel"], **fixture["meta"]["tolerances"]["mel"])


def test_slaney_mel_basis_properties():
    basis = slaney_mel_basis(16000, 1024, 80, 0.0, 8000.0)
    assert basis.shape == (80, 513) and basis.dtype.name == "float32"
    assert (basis >= 0).all() and (basis.sum(axis=1) > 0).all()
    # Slaney norm: each triangle has unit area in Hz (2 / bandwidth peak, half-width bases).
    peaks = basis.argmax(axis=1)
    assert (peaks[1:] >= peaks[:-1]).all()


@pytest.mark.parametrize("mode,latent_dim,hop", [("16k", 20, 256), ("44k", 40, 512)])
def test_tiny_codec_round_trip_shapes(mode, latent_dim, hop):
    codec = AudioCodec(mode=mode, size="tiny")
    assert codec.latent_dim == latent_dim and codec.samples_per_latent == 2 * hop
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.training and not codec.vae.training
    generator = torch.Generator().manual_seed(1)
    waveform = torch.rand(2, 12 * 2 * hop, generator=generator) * 2 - 1
    mean, std = codec.encode_waveform(waveform)
    assert mean.shape == std.shape == (2, 12, latent_dim) and (std > 0).all()
    audio = codec.decode_latent(mean)
    assert audio.shape == (2, 12 * 2 * hop) and torch.isfinite(audio).all()
    assert 0.01 < float(audio.std()) < 0.9  # audible, not saturated
    # Tiny weights are seeded: a second build gives identical outputs (extraction vs training).
    again = AudioCodec(mode=mode, size="tiny")
    torch.testing.assert_close(again.encode_waveform(waveform)[0], mean, rtol=0, atol=0)


def test_bf16_autocast_runs_and_stays_close():
    codec = AudioCodec(mode="16k", size="tiny")
    waveform = torch.rand(1, 8 * 512, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mean32, _ = codec.encode_waveform(waveform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean16, std16 = codec.encode_waveform(waveform)
        audio = codec.decode_latent(mean16)
    assert mean16.dtype == std16.dtype == audio.dtype == torch.float32
    assert float((mean16 - mean32).abs().max()) < 0.1 * float(mean32.abs().max())


def test_tiny_checkpoints_load_like_released_files(tmp_path):
    # A VAE file holds the weights before the forced weight normalisation; loading applies it.
    torch.manual_seed(3)
    raw = VAE(VAE_CONFIGS[("16k", "tiny")])
    with torch.no_grad():
        for param in raw.parameters():
            param.normal_()
    torch.save(raw.state_dict(), tmp_path / "tiny_vae.pth")
    loaded = get_vae("16k", checkpoint=tmp_path / "tiny_vae.pth", size="tiny")
    raw.remove_weight_norm()
    mel = torch.randn(1, 80, 16)
    torch.testing.assert_close(loaded.encode(mel).mean, raw.encode(mel).mean, rtol=0, atol=0)
    assert abs(float(loaded.encoder.conv_in.weight[0].norm()) - 1.0) < 1e-3

    vocoder = get_vocoder("44k", size="tiny")
    torch.save({"generator": released_state_dict(vocoder)}, tmp_path / "bigvgan_generator.pt")
    reloaded = get_vocoder("44k", checkpoint=tmp_path / "bigvgan_generator.pt", size="tiny")
    mel = torch.randn(1, 128, 4)
    torch.testing.assert_close(reloaded(mel), vocoder(mel), rtol=1e-4, atol=1e-5)
    assert reloaded(mel).shape == (1, 1, 4 * 512)
    assert VOCODER_CONFIGS[("44k", "tiny")].hop_size == 512


def test_loader_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("MMGIN_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="python -m mmgin.weights download vae_16k"):
        get_vae("16k")
    with pytest.raises(FileNotFoundError, match="bigvgan_generator.pt"):
        get_vocoder("44k")
    with pytest.raises(ValueError, match="unknown audio mode"):
        get_vae("22k", size="tiny")

    torch.save(get_vae("16k", size="tiny").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not fit VAE"):
        get_vae("44k", checkpoint=tmp_path / "tiny.pth", size="tiny")
    (tmp_path / "v1-16.pth").write_bytes(b"garbage")
    with pytest.raises(CorruptWeightsError, match="69f56803f59a549a1a507c93859fd4d7"):
        get_vae("16k", checkpoint=tmp_path / "v1-16.pth")
    torch.save({"not_generator": {}}, tmp_path / "best_netG.pt")
    with pytest.raises(ValueError, match="'generator'"):
        get_vocoder("16k", checkpoint=tmp_path / "best_netG.pt")


def test_gin_fragments_configure_the_codec(repo_root):
    import mmgin.programs  # noqa: F401  (registers every configurable)

    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [str(repo_root / "gin/audio/44k.gin"), str(repo_root / "gin/audio/tiny.gin")], []
        )
        codec = AudioCodec()
        assert (codec.mode, codec.size, codec.sampling_rate, codec.latent_dim) == ("44k", "tiny", 44100, 40)
        gin.clear_config()
        gin.parse_config_files_and_bindings([str(repo_root / "gin/audio/16k.gin")], [])
        assert gin.query_parameter("AudioCodec.vocoder_checkpoint") == "best_netG.pt"
    finally:
        gin.clear_config()
