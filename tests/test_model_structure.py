"""The network's state dict, parameter counts, sequence lengths and FLOP count."""

from __future__ import annotations

from pathlib import Path

import gin
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mmgin.model import SequenceConfig, get_network
from mmgin.model.flops import inference_flops_per_sample, training_flops_per_sample
from mmgin.model.network import RECOMPUTED_KEYS, sync_upsample_index
from mmgin.testing.recipe import read_manifest

# Module parameters (frozen included) and trainable parameters, from the manifests README.
REFERENCE_COUNTS = {
    "small_16k": (157_283_644, 157_204_756),
    "small_44k": (157_409_144, 157_330_216),
    "medium_44k": (621_805_944, 621_727_016),
    "large_44k": (1_030_002_168, 1_029_923_240),
    "large_44k_v2": (1_030_575_608, 1_030_496_680),
}


def _meta_network(name: str, **overrides):
    with torch.device("meta"):
        return get_network(name, **overrides)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_state_dict_matches_released_manifest(name: str) -> None:
    network = _meta_network(name)
    manifest = read_manifest(f"mmaudio_{name}")
    file_only = [e.key for e in manifest if e.key in RECOMPUTED_KEYS]
    # v1 files carry the RoPE tables, the v2 file the timestep frequencies; never both.
    v1_tables = ["clip_rot", "latent_rot"]
    assert sorted(file_only) == (["t_embed.freqs"] if name.endswith("v2") else v1_tables)
    expected = [(e.key, e.shape, e.dtype) for e in manifest if e.key not in RECOMPUTED_KEYS]
    actual = [(k, tuple(v.shape), v.dtype) for k, v in network.state_dict().items()]
    assert actual == expected

    params = list(network.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    assert (total, trainable) == REFERENCE_COUNTS[name]
    frozen = {n for n, p in network.named_parameters() if not p.requires_grad}
    assert frozen == {"latent_mean", "latent_std", "empty_string_feat"}


@pytest.mark.parametrize(
    "mode, duration, expected",
    [
        ("16k", 8.0, (250, 128000, 64, 192, 20)),
        ("44k", 8.0, (345, 353280, 64, 192, 40)),
        ("16k", 10.0, (313, 160256, 80, 240, 20)),
        ("44k", 5.0, (216, 221184, 40, 112, 40)),
    ],
)
def test_sequence_config(mode: str, duration: float, expected: tuple[int, ...]) -> None:
    seq = SequenceConfig.for_mode(mode, duration)
    got = (seq.latent_seq_len, seq.num_audio_samples, seq.clip_seq_len, seq.sync_seq_len,
           seq.latent_dim)
    assert got == expected
    assert seq.text_seq_len == 77
    assert (seq.sampling_rate, seq.hop_size) == ((16000, 256) if mode == "16k" else (44100, 512))
    with pytest.raises(ValueError, match="unknown audio mode"):
        SequenceConfig.for_mode("22k")


def test_sync_upsampling_uses_float32_source_indices() -> None:
    # 192 -> 345 in float32 reads frames 31 and 95 at outputs 57 and 172 (exact: 32, 96).
    index = sync_upsample_index(192, 345)
    assert index[57].item() == 31 and index[172].item() == 95
    exact = [(2 * j + 1) * 192 // 690 for j in range(345)]
    assert [j for j in range(345) if index[j].item() != exact[j]] == [57, 172]
    exact_16k = torch.tensor([(2 * j + 1) * 192 // 500 for j in range(250)])
    assert torch.equal(sync_upsample_index(192, 250), exact_16k)  # no ties for 192 -> 250


def test_reference_initialisation_zeroes_gates_and_output() -> None:
    network = get_network("tiny_16k")
    zero = [
        "final_layer.conv.weight",
        "final_layer.adaLN_modulation.1.weight",
        "joint_blocks.0.latent_block.adaLN_modulation.1.bias",
        "joint_blocks.1.text_block.adaLN_modulation.1.weight",
        "fused_blocks.0.adaLN_modulation.1.weight",
        "sync_pos_emb",
        "empty_clip_feat",
        "empty_sync_feat",
        "clip_cond_proj.bias",
    ]
    state = network.state_dict()
    for key in zero:
        assert not state[key].any(), key
    assert torch.equal(state["fused_blocks.0.attn.q_norm.weight"], torch.ones(32))
    assert state["latent_mean"].isnan().all() and state["latent_std"].isnan().all()
    assert 0.015 < state["t_embed.mlp.0.weight"].std() < 0.025
    # xavier_uniform bound for the 64 -> 192 qkv projection of the tiny network.
    bound = (6 / (64 + 192)) ** 0.5
    qkv = state["joint_blocks.0.clip_block.attn.qkv.weight"]
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    # A fresh network predicts zero velocity: every output path starts gated off.
    out = network(torch.randn(1, 250, 20), torch.randn(1, 64, 1024), torch.randn(1, 192, 768),
                  torch.randn(1, 77, 1024), torch.rand(1))
    assert not out.any()


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="unknown network 'huge_16k'"):
        get_network("huge_16k")
    network = get_network("tiny_16k")
    with pytest.raises(ValueError, match="sync_f has sequence length 190"):
        network.preprocess_conditions(
            torch.zeros(1, 64, 1024), torch.zeros(1, 190, 768), torch.zeros(1, 77, 1024)
        )
    with pytest.raises(ValueError, match="not a whole number"):
        network.update_seq_lengths(250, 64, 190)


def test_update_seq_lengths_follows_duration() -> None:
    network = get_network("tiny_44k", duration=5.0)
    seq = SequenceConfig.for_mode("44k", 5.0)
    assert (network.latent_seq_len, network.clip_seq_len, network.sync_seq_len) == (216, 40, 112)
    assert network.latent_rot.shape == (1, 216, 16, 2, 2)
    out = network(torch.randn(2, 216, 40), torch.randn(2, 40, 1024), torch.randn(2, 112, 768),
                  torch.randn(2, 77, 1024), torch.rand(2))
    assert out.shape == (2, 216, 40)
    network.update_seq_lengths(345, 64, 192)
    assert network.latent_rot.shape == (1, 345, 16, 2, 2)
    assert network.clip_rot.shape == (1, 64, 16, 2, 2)
    assert network.sync_index.shape == (345,) and seq.num_audio_samples == 216 * 1024


def test_flops_match_torch_flop_counter() -> None:
    network = get_network("tiny_16k")
    inputs = (torch.randn(1, 250, 20), torch.randn(1, 64, 1024), torch.randn(1, 192, 768),
              torch.randn(1, 77, 1024), torch.rand(1))
    # The math SDPA backend runs attention as two bmm's, which the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        network(*inputs)
    assert inference_flops_per_sample(network) == counter.get_total_flops()
    assert training_flops_per_sample(network) == 3 * counter.get_total_flops()
    large = _meta_network("large_44k")
    # About 2 FLOPs per parameter per latent token: 0.53 TFLOP for the 1 B network.
    assert 0.5e12 < inference_flops_per_sample(large) < 0.56e12


def test_cfg_wrapper_and_negative_text() -> None:
    torch.manual_seed(0)
    network = get_network("tiny_16k").eval()
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(0.0, 0.05)
    clip, sync, text = torch.randn(2, 64, 1024), torch.randn(2, 192, 768), torch.randn(2, 77, 1024)
    x, t = torch.randn(2, 250, 20), torch.tensor(0.3)
    with torch.inference_mode():
        cond = network.preprocess_conditions(clip, sync, text)
        empty = network.get_empty_conditions(2)
        v_cond = network.predict_flow(x, torch.full((2,), 0.3), cond)
        v_empty = network.predict_flow(x, torch.full((2,), 0.3), empty)
        torch.testing.assert_close(network.ode_wrapper(t, x, cond, empty, 0.5), v_cond)
        guided = network.ode_wrapper(t, x, cond, empty, 3.0)
        torch.testing.assert_close(guided, 3.0 * v_cond - 2.0 * v_empty)
        # The empty branch is the batch-1 empty features, identical for every sample.
        empty_features = (network.get_empty_clip_sequence(2), network.get_empty_sync_sequence(2),
                          network.get_empty_string_sequence(2))
        torch.testing.assert_close(v_empty, network(x, *empty_features, torch.full((2,), 0.3)))
        negative = torch.randn(2, 77, 1024)
        neg = network.get_empty_conditions(2, negative_text_features=negative)
        assert neg.text_f.shape == (2, 77, 64) and neg.clip_f.shape == (2, 64, 64)
        expected = network.preprocess_conditions(network.get_empty_clip_sequence(2),
                                                 network.get_empty_sync_sequence(2), negative)
        torch.testing.assert_close(neg.text_f_c, expected.text_f_c)
        assert not torch.allclose(neg.text_f_c, empty.text_f_c)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS) + ["tiny_16k", "tiny_44k"])
def test_gin_fragment_selects_the_variant(name: str, repo_root: Path) -> None:
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [str(repo_root / "gin" / "model" / f"{name}.gin")],
            ["MMAudio.activation_checkpointing = True"],
        )
        with torch.device("meta"):
            network = get_network()
    finally:
        gin.clear_config()
    assert network.activation_checkpointing
    reference = _meta_network(name)
    assert [(k, v.shape) for k, v in network.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
