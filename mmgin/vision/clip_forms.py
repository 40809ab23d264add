"""GEMM-friendly forms of two layers of open_clip's image tower, with the same parameters.

Profiled on an H100 (bench/README.md, bf16 + compile), CLIP spent ~7.6 ms per video copying the
packed q/k/v of ``nn.MultiheadAttention``, whose functional form works in (L, B, D) and makes
q, k and v contiguous before attention, and ~2.4 ms in cuDNN's patch-embedding convolution
(14x14 stride 14, a slow kernel for this shape), of ~141 ms. The forms here compute the same
functions without them: attention on (B, L, D) with strided q/k/v views handed to SDPA, and
the patch embedding as one matrix product over non-overlapping patches. They hold the original
Parameter objects, so state-dict keys, shapes and values (and the checkpoint format) are
unchanged; float32 results agree to ~1e-7 relative (tests/test_vision_clip.py). Measured on the
same GPU kind: CLIP 141 -> 132 ms per video in bf16 + compile, unchanged in eager float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchFirstSelfAttention(nn.Module):
    """Self-attention on (B, L, D) with ``nn.MultiheadAttention``'s parameters and call form
    (``attn(x, x, x, need_weights=False, attn_mask=...)``), as open_clip's blocks call it."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim) or mha.bias_k is not None or mha.dropout:
            raise ValueError("only batch-first packed self-attention without bias_k/v or dropout is supported")
        # Registered in nn.MultiheadAttention's order, so state-dict keys keep their order.
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.num_heads = mha.num_heads

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or need_weights:
            raise ValueError("BatchFirstSelfAttention is self-attention without attention weights")
        if attn_mask is not None and not attn_mask.is_floating_point():
            raise ValueError("attn_mask must be additive (a bool mask means the opposite in SDPA)")
        batch, length, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        # (B, L, 3, H, hd) -> three strided (B, H, L, hd) views: no copy before SDPA.
        q, k, v = qkv.view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        # SDPA lays its output out as (B, L, H, hd) for such inputs: this reshape is a view.
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), None


class PatchEmbedding(nn.Module):
    """``nn.Conv2d(3, width, kernel_size=p, stride=p, bias=False)`` as a matrix product of the
    flattened p x p patches with the (width, 3*p*p) weight; returns the convolution's
    (N, width, grid, grid) shape as a channel-last view, which open_clip then flattens to
    (N, grid*grid, width) without a copy."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        patch = conv.kernel_size[0]
        if conv.bias is not None or conv.kernel_size != (patch, patch) or conv.stride != conv.kernel_size \
                or conv.padding != (0, 0) or conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError(f"not a non-overlapping patch embedding: {conv}")
        self.weight = conv.weight
        self.patch = patch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = images.shape
        p = self.patch
        rows, cols = height // p, width // p
        patches = images[:, :, : rows * p, : cols * p].reshape(n, channels, rows, p, cols, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n * rows * cols, channels * p * p)
        out = F.linear(patches, self.weight.flatten(1))  # (N*rows*cols, width)
        return out.view(n, rows, cols, -1).permute(0, 3, 1, 2)


def use_gemm_forms(visual: nn.Module) -> None:
    """Swaps the forms above into an open_clip VisionTransformer in place (call before
    compiling it; idempotent)."""
    if isinstance(visual.conv1, nn.Conv2d):
        visual.conv1 = PatchEmbedding(visual.conv1)
    for block in visual.transformer.resblocks:
        if isinstance(block.attn, nn.MultiheadAttention):
            block.attn = BatchFirstSelfAttention(block.attn)
