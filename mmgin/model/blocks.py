"""Transformer blocks of the MMAudio network: adaLN-modulated single-stream and joint blocks.

A block is split into `pre_attention` (modulation, q/k/v) and `post_attention` (gated
residuals) so that a joint block can run one attention over the concatenated streams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mmgin.model.layers import MLP, ChannelLastConv1d, ConvMLP, modulate
from mmgin.model.rope import apply_rope

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA over (B, H, N, d) without mask; returns (B, N, H*d)."""
    # Contiguous inputs: the cuDNN SDPA backward fails on the strided q/k/v views.
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """q/k/v projection with per-head RMSNorm on q and k, then optional RoPE.

    The qkv weight rows are laid out (head, head_dim, q|k|v) as in the released weights. The
    forward reorders them to (q|k|v, head, head_dim) first (a small gather of the weight), so
    each head's q, k and v come out as contiguous rows for the norms, RoPE and attention; every
    output value is the same dot product as with the released layout.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(self.head_dim)
        self.k_norm = nn.RMSNorm(self.head_dim)

    def _grouped(self, rows: torch.Tensor) -> torch.Tensor:
        """(head, head_dim, 3, ...) rows -> (3, head, head_dim, ...) rows."""
        grouped = rows.view(self.num_heads, self.head_dim, 3, -1).permute(2, 0, 1, 3)
        return grouped.reshape(rows.shape)

    def pre_attention(self, x: torch.Tensor, rot: torch.Tensor | None) -> QKV:
        batch, length, _ = x.shape
        weight = self._grouped(self.qkv.weight)
        bias = self._grouped(self.qkv.bias.unsqueeze(-1)).squeeze(-1)
        qkv = F.linear(x, weight, bias).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.transpose(1, 3).unbind(2)  # each (B, H, L, head_dim)
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        return q, k, v


@dataclass
class Modulation:
    """The gates and the MLP modulation a block needs after attention."""

    gate_msa: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


class MMDitSingleBlock(nn.Module):
    """adaLN-Zero transformer block on one stream.

    kernel_size 3 makes the output projection and the MLP convolutions (latent and CLIP
    streams); kernel_size 1 makes them Linear (text). A ``pre_only`` block only contributes
    q/k/v to a joint attention (the last joint block's CLIP and text streams).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, pre_only: bool = False,
                 kernel_size: int = 7):
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, num_heads)
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
            return
        if kernel_size == 1:
            self.linear1: nn.Module = nn.Linear(dim, dim)
            self.ffn: nn.Module = MLP(dim, int(dim * mlp_ratio))
        else:
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=kernel_size // 2)
            self.ffn = ConvMLP(dim, int(dim * mlp_ratio), kernel_size=kernel_size)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None
    ) -> tuple[QKV, Modulation | None]:
        if self.pre_only:
            shift_msa, scale_msa = self.adaLN_modulation(c).chunk(2, dim=-1)
            rest = None
        else:
            shift_msa, scale_msa, *gates = self.adaLN_modulation(c).chunk(6, dim=-1)
            rest = Modulation(*gates)
        qkv = self.attn.pre_attention(modulate(self.norm1(x), shift_msa, scale_msa), rot)
        return qkv, rest

    def post_attention(
        self, x: torch.Tensor, attn_out: torch.Tensor, mod: Modulation | None
    ) -> torch.Tensor:
        if mod is None:
            return x
        x = x + self.linear1(attn_out) * mod.gate_msa
        r = modulate(self.norm2(x), mod.shift_mlp, mod.scale_mlp)
        return x + self.ffn(r) * mod.gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        qkv, mod = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(*qkv), mod)


class JointBlock(nn.Module):
    """One attention over [latent | clip | text]; each stream keeps its own weights.

    The latent stream is modulated per token (extended_c carries the sync features), the CLIP
    and text streams by the global condition. Text gets no RoPE.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = MMDitSingleBlock(dim, num_heads, mlp_ratio, False, kernel_size=3)
        self.clip_block = MMDitSingleBlock(dim, num_heads, mlp_ratio, pre_only, kernel_size=3)
        self.text_block = MMDitSingleBlock(dim, num_heads, mlp_ratio, pre_only, kernel_size=1)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rot: torch.Tensor,
        clip_rot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_qkv, x_mod = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_mod = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_mod = self.text_block.pre_attention(text_f, global_c, None)

        joint = [torch.cat([x_qkv[i], c_qkv[i], t_qkv[i]], dim=2) for i in range(3)]
        attn_out = attention(*joint)
        x_out, c_out, t_out = attn_out.split([latent.shape[1], clip_f.shape[1], text_f.shape[1]], dim=1)

        latent = self.latent_block.post_attention(latent, x_out, x_mod)
        if not self.pre_only:
            clip_f = self.clip_block.post_attention(clip_f, c_out, c_mod)
            text_f = self.text_block.post_attention(text_f, t_out, t_mod)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    """adaLN + LayerNorm + a k7 convolution to the latent channels."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, latent: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(latent), shift, scale))
