"""Analytic FLOPs of the MMAudio network per sample, for MFU.

Counts matrix products only, at 2 FLOPs per multiply-add: a Linear or a 'same'-padded conv
costs 2 x tokens x weight elements, attention 2 x 2 x N^2 x D (QK^T and AV). Norms,
activations and elementwise ops are left out, as is usual for MFU. Training is forward +
backward = 3 x forward. Works on networks built on the meta device.
"""

from __future__ import annotations

from torch import nn

from mmgin.model.blocks import MMDitSingleBlock
from mmgin.model.network import MMAudio


def _matmul_flops(module: nn.Module, tokens: int) -> int:
    """2 x tokens x weight elements over every Linear/Conv1d inside ``module``."""
    layers = (sub for sub in module.modules() if isinstance(sub, (nn.Linear, nn.Conv1d)))
    return sum(2 * tokens * sub.weight.numel() for sub in layers)


def _attention_flops(tokens: int, dim: int) -> int:
    return 2 * 2 * tokens * tokens * dim


def _single_block_flops(block: MMDitSingleBlock, tokens: int, condition_tokens: int) -> int:
    """A block's projections on its stream; the adaLN runs once per condition token."""
    modulation = _matmul_flops(block.adaLN_modulation, condition_tokens)
    return _matmul_flops(block, tokens) - _matmul_flops(block.adaLN_modulation, tokens) + modulation


def forward_flops_breakdown(network: MMAudio) -> dict[str, int]:
    """FLOPs of one forward pass for one sample, by part of the network."""
    latent, clip = network.latent_seq_len, network.clip_seq_len
    sync, text = network.sync_seq_len, network.text_seq_len
    dim = network.hidden_dim
    parts = {
        "input_projections": (
            _matmul_flops(network.audio_input_proj, latent)
            + _matmul_flops(network.clip_input_proj, clip)
            + _matmul_flops(network.sync_input_proj, sync)
            + _matmul_flops(network.text_input_proj, text)
        ),
        "global_conditioning": (
            _matmul_flops(network.clip_cond_proj, 1)
            + _matmul_flops(network.text_cond_proj, 1)
            + _matmul_flops(network.global_cond_mlp, 1)
            + _matmul_flops(network.t_embed, 1)
        ),
        "joint_blocks": 0,
        "fused_blocks": 0,
        "attention": 0,
    }
    for block in network.joint_blocks:
        parts["joint_blocks"] += (
            _single_block_flops(block.latent_block, latent, latent)  # per-token extended_c
            + _single_block_flops(block.clip_block, clip, 1)
            + _single_block_flops(block.text_block, text, 1)
        )
        parts["attention"] += _attention_flops(latent + clip + text, dim)
    for block in network.fused_blocks:
        parts["fused_blocks"] += _single_block_flops(block, latent, latent)
        parts["attention"] += _attention_flops(latent, dim)
    final = network.final_layer
    parts["final_layer"] = (
        _matmul_flops(final.adaLN_modulation, 1) + _matmul_flops(final.conv, latent)
    )
    return parts


def inference_flops_per_sample(network: MMAudio) -> int:
    """One network evaluation (conditions included) for one sample."""
    return sum(forward_flops_breakdown(network).values())


def training_flops_per_sample(network: MMAudio) -> int:
    """Forward + backward for one training sample: 3 x the forward FLOPs."""
    return 3 * inference_flops_per_sample(network)
