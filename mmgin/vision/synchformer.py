"""Synchformer's visual feature extractor (MotionFormer, divided space-time attention).

MMAudio conditions on the per-frame-pair features of Synchformer's visual branch: 16-frame
segments of a 25 fps, 224 px video (stride 8 frames) each become 8 tokens of width 768.
The module names and parameter layout follow the released ``synchformer_state_dict.pth``
(the ``vfeat_extractor.*`` keys), so that file loads strictly; the blocks themselves are
written for inference speed (patch embedding as one matmul, attention through SDPA, only
the CLS query in the aggregation layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import gin
import torch
import torch.nn.functional as F
from torch import nn

from mmgin import weights
from mmgin.modules import freeze, load_strict, seeded_init

SEGMENT_FRAMES = 16
SEGMENT_STEP = 8
_LN_EPS = 1e-6
SYNCHFORMER_WEIGHTS = "synchformer"  # mmgin.weights name of synchformer_state_dict.pth
SYNCHFORMER_TINY_SEED = 25


@dataclass(frozen=True)
class SynchformerConfig:
    """Sizes of the visual branch; 'full' is MotionFormer divided_224_16x4."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet: int = 2
    image_size: int = 224
    segment_frames: int = SEGMENT_FRAMES

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def time_tokens(self) -> int:
        return self.segment_frames // self.tubelet


SYNCHFORMER_SIZES = {
    "full": SynchformerConfig(),
    # Same layout and output width (768, 8 tokens per segment), a fraction of the compute:
    # one block, 4x4 patches of 56 px, narrow MLPs.
    "tiny": SynchformerConfig(depth=1, mlp_ratio=1.0, patch_size=56),
}


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _PatchEmbed(nn.Module):
    """A patchifying convolution (kernel = stride); ``proj`` holds the conv weights."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.proj = conv


class DividedAttention(nn.Module):
    """Attention within groups of patch tokens (one frame, or one location over time).

    The CLS token attends to every token; every patch token attends to its group plus CLS.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, over_time: bool) -> torch.Tensor:
        batch, tokens, dim = x.shape
        heads = self.num_heads
        head_dim = dim // heads
        patches = (tokens - 1) // frames
        # (3, B, H, N, d)
        q, k, v = self.qkv(x).view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)

        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (B, H, 1, d)

        def grouped(t: torch.Tensor) -> torch.Tensor:
            # patch tokens are ordered (frame, location); make groups the batch dims.
            t = t[:, :, 1:].unflatten(2, (frames, patches))  # (B, H, F, P, d)
            return t.transpose(2, 3) if over_time else t  # (B, H, groups, members, d)

        q_, k_, v_ = grouped(q), grouped(k), grouped(v)
        groups = q_.shape[2]
        cls_k = k[:, :, :1, None].expand(-1, -1, groups, -1, -1)
        cls_v = v[:, :, :1, None].expand(-1, -1, groups, -1, -1)
        k_ = torch.cat((cls_k, k_), dim=3)
        v_ = torch.cat((cls_v, v_), dim=3)
        out = F.scaled_dot_product_attention(
            q_.flatten(1, 2), k_.flatten(1, 2), v_.flatten(1, 2)
        ).unflatten(1, (heads, groups))
        if over_time:
            out = out.transpose(2, 3)
        out = torch.cat((cls_out, out.flatten(2, 3)), dim=2)  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention, then space attention, then MLP; each pre-norm with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = DividedAttention(dim, num_heads)
        self.timeattn = DividedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, over_time=True)
        x = x + self.attn(self.norm1(x), frames, over_time=False)
        return x + self.mlp(self.norm2(x))


class _MultiheadAttentionParams(nn.Module):
    """The parameters of ``nn.MultiheadAttention`` (packed q/k/v input projection)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)


class SpatialCLSAggregation(nn.Module):
    """A pre-norm ``nn.TransformerEncoderLayer`` over [CLS; patches of one frame] keeping CLS.

    Only the CLS output is used, so only the CLS query is computed (keys and values still
    come from every token); mathematically identical to running the whole layer.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.self_attn = _MultiheadAttentionParams(dim)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, tokens, D) patch tokens of N frames -> (N, D)."""
        n, _, dim = x.shape
        heads = self.num_heads
        cls = self.cls_token.expand(n, -1, -1).to(x.dtype)
        x = torch.cat((cls, x), dim=1)
        h = self.norm1(x)
        w_q, w_kv = self.self_attn.in_proj_weight.split((dim, 2 * dim))
        b_q, b_kv = self.self_attn.in_proj_bias.split((dim, 2 * dim))
        q = F.linear(h[:, :1], w_q, b_q).view(n, 1, heads, -1).transpose(1, 2)
        k, v = F.linear(h, w_kv, b_kv).view(n, -1, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, dim)
        y = x[:, 0] + self.self_attn.out_proj(attn)
        return y + self.linear2(F.gelu(self.linear1(self.norm2(y))))


class MotionFormer(nn.Module):
    """One 16-frame segment (N, 3, T, H, W) in [-1, 1] -> (N, T/2, D) features."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, p = cfg.embed_dim, cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, cfg.time_tokens, dim))
        # The 2-D patch embedding is unused but stored in the released file.
        self.patch_embed = _PatchEmbed(nn.Conv2d(3, dim, p, stride=p)).requires_grad_(False)
        tube = (cfg.tubelet, p, p)
        self.patch_embed_3d = _PatchEmbed(nn.Conv3d(3, dim, tube, stride=tube))
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.spatial_attn_agg = SpatialCLSAggregation(
            dim, cfg.num_heads, int(cfg.mlp_ratio * dim)
        )

    def _embed_patches(self, video: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) -> (N, t*h*w, D): the tubelet conv as one matmul, (t, h, w) order."""
        cfg = self.cfg
        n, p, g = video.shape[0], cfg.patch_size, cfg.grid
        tubes = video.reshape(n, cfg.time_tokens, cfg.tubelet, 3, g, p, g, p)
        # -> (N, t, h, w, C, dt, py, px): channel-major like the conv weight (D, C, dt, py, px)
        tubes = tubes.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(n, -1, 3 * cfg.tubelet * p * p)
        proj = self.patch_embed_3d.proj
        return F.linear(tubes, proj.weight.flatten(1), proj.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (N, T=16, 3, H, W) segments -> (N, T/2, D)."""
        cfg = self.cfg
        n = video.shape[0]
        x = self._embed_patches(video)
        frames, patches = cfg.time_tokens, cfg.grid * cfg.grid
        pos = self.pos_embed[:, 1:].repeat(1, frames, 1) + self.temp_embed.repeat_interleave(
            patches, dim=1
        )
        pos = torch.cat((self.pos_embed[:, :1], pos), dim=1)
        x = torch.cat((self.cls_token.expand(n, -1, -1).to(x.dtype), x), dim=1) + pos
        for block in self.blocks:
            x = block(x, frames)
        x = self.norm(x[:, 1:])  # (N, t*h*w, D), CLS dropped
        x = x.reshape(n * frames, patches, cfg.embed_dim)
        return self.spatial_attn_agg(x).view(n, frames, cfg.embed_dim)


def segment_video(video: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, S, 16, 3, H, W): windows of 16 frames with step 8 (a view)."""
    frames = video.shape[1]
    if frames < SEGMENT_FRAMES:
        raise ValueError(f"Synchformer needs at least {SEGMENT_FRAMES} frames, got {frames}")
    windows = video.unfold(1, SEGMENT_FRAMES, SEGMENT_STEP)  # (B, S, 3, H, W, 16)
    return windows.permute(0, 1, 5, 2, 3, 4)


class Synchformer(nn.Module):
    """The conditioning encoder: a 25 fps video in [-1, 1] -> (B, S*8, 768) sync features.

    ``segment_batch`` bounds how many 16-frame segments run through the network at once
    (memory vs speed); it does not change the result.
    """

    def __init__(self, cfg: SynchformerConfig, segment_batch: int = 24) -> None:
        super().__init__()
        self.vfeat_extractor = MotionFormer(cfg)
        self.segment_batch = segment_batch

    def compile_for_inference(self, backend: str = "inductor") -> None:
        """Compiles the per-chunk network in place (state-dict keys unchanged). Chunks are
        ``segment_batch`` segments, one video's worth by default, so one static shape serves
        every batch; the first chunk pays the compilation."""
        self.vfeat_extractor.compile(dynamic=False, backend=backend)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        cfg = self.vfeat_extractor.cfg
        batch, _, channels, height, width = video.shape
        if (channels, height, width) != (3, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"Synchformer expects frames of shape (3, {cfg.image_size}, {cfg.image_size}), "
                f"got {(channels, height, width)}"
            )
        segments = segment_video(video)
        num_segments = segments.shape[1]
        flat = segments.flatten(0, 1)  # segment-major within each video
        outputs = [
            self.vfeat_extractor(flat[i : i + self.segment_batch].contiguous())
            for i in range(0, flat.shape[0], self.segment_batch)
        ]
        features = torch.cat(outputs, dim=0)  # (B*S, 8, D)
        return features.reshape(batch, num_segments * cfg.time_tokens, cfg.embed_dim)


def load_synchformer_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``vfeat_extractor.*`` tensors of a Synchformer checkpoint (whole model or visual part)."""
    state = weights.load(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    visual = {k: v for k, v in state.items() if k.startswith("vfeat_extractor.")}
    if not visual:
        raise ValueError(
            f"{path}: no 'vfeat_extractor.*' keys; expected synchformer_state_dict.pth "
            "(the Synchformer release file used by MMAudio)"
        )
    return visual


def build_synchformer(
    state: Mapping[str, torch.Tensor] | None,
    size: str = "full",
    segment_batch: int = 24,
    device: str | torch.device = "cpu",
    source: str = "state dict",
) -> Synchformer:
    """A frozen Synchformer from ``vfeat_extractor.*`` tensors (assigned); seeded if None."""
    if size not in SYNCHFORMER_SIZES:
        raise ValueError(f"unknown Synchformer size {size!r}; choose from {sorted(SYNCHFORMER_SIZES)}")
    with torch.device("meta"):
        model = Synchformer(SYNCHFORMER_SIZES[size], segment_batch=segment_batch)
    if state is not None:
        load_strict(model, state, source, assign=True)
    else:
        model.to_empty(device="cpu")
        seeded_init(model, seed=SYNCHFORMER_TINY_SEED)
    return freeze(model.to(device=device, dtype=torch.float32))


@gin.configurable
def get_synchformer(
    checkpoint: str | Path | None = None,
    size: str = "full",
    segment_batch: int = 24,
    device: str | torch.device = "cpu",
) -> Synchformer:
    """A frozen Synchformer visual encoder in eval mode.

    'full' loads ``checkpoint`` (default: synchformer_state_dict.pth in the weights directory),
    found by ``weights.resolve``; 'tiny' is seeded-random unless a checkpoint of its own shapes
    is given.
    """
    if checkpoint is None and size == "full":
        checkpoint = SYNCHFORMER_WEIGHTS
    if checkpoint is not None:
        checkpoint = weights.resolve(checkpoint)
    state = load_synchformer_state_dict(checkpoint) if checkpoint is not None else None
    return build_synchformer(state, size, segment_batch, device, source=str(checkpoint))
