"""The MMAudio flow network: predicts the flow velocity of audio latents given video and text.

Parameter names, shapes and numerics follow the released checkpoints (FACTS §7), so the
released `mmaudio_*.pth` files load strictly and reproduce the reference outputs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import gin
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from mmgin.model.blocks import FinalBlock, JointBlock, MMDitSingleBlock
from mmgin.model.layers import MLP, ChannelLastConv1d, ConvMLP, TimestepEmbedder
from mmgin.model.rope import rope_rotations
from mmgin.model.sequence import (CLIP_DIM, SYNC_DIM, SYNC_DOWNSAMPLE, SYNC_SEGMENT_FRAMES, TEXT_DIM,
                                  TEXT_SEQ_LEN, SequenceConfig)

SYNC_TOKENS_PER_SEGMENT = SYNC_SEGMENT_FRAMES // SYNC_DOWNSAMPLE
# Keys of released files that the module recomputes instead of loading.
RECOMPUTED_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")


@dataclasses.dataclass
class PreprocessedConditions:
    """Projected conditions; they do not depend on t, so sampling computes them once."""

    clip_f: torch.Tensor  # (B, clip_seq_len, D)
    sync_f: torch.Tensor  # (B, latent_seq_len, D), upsampled to the latent rate
    text_f: torch.Tensor  # (B, text_seq_len, D)
    clip_f_c: torch.Tensor  # (B, D)
    text_f_c: torch.Tensor  # (B, D)


def sync_upsample_index(sync_seq_len: int, latent_seq_len: int) -> torch.Tensor:
    """Source index of each latent frame under `F.interpolate(mode='nearest-exact')`.

    Torch forms the source index in float32 on the CPU, which for 192 -> 345 picks frames 31
    and 95 where exact arithmetic picks 32 and 96; the released model was run that way. The
    table is taken from the CPU kernel itself and then applied by indexing, which also keeps
    the op exact under torch.compile.
    """
    source = torch.arange(sync_seq_len, dtype=torch.float32, device="cpu").view(1, 1, -1)
    index = F.interpolate(source, size=latent_seq_len, mode="nearest-exact")
    return index.view(-1).to(torch.long)


CHECKPOINTING_MODES = (False, True, "full", "selective")

_aten = torch.ops.aten
# Outputs worth keeping: recomputing them costs FLOPs, not just memory traffic.
_PRODUCT_OPS = frozenset((
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
))


def _keep_products(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _PRODUCT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


_keep_products_context = functools.partial(create_selective_checkpoint_contexts, _keep_products)


@gin.configurable
class MMAudio(nn.Module):
    """Joint (latent, CLIP, text) blocks, then fused latent-only blocks, then a final layer.

    ``v2`` selects the large_44k_v2 input projections (SiLU) and timestep embedding (F = D,
    max_period = 1). ``activation_checkpointing`` recomputes each block in the backward pass,
    trading about a third more compute for memory on small GPUs: True (or 'full') recomputes
    all of it; 'selective' keeps the matrix-product and attention outputs and recomputes only
    the elementwise work between them (norms, modulation, RoPE, activations, conv windows).
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        hidden_dim: int,
        depth: int,
        fused_depth: int,
        num_heads: int,
        latent_seq_len: int,
        clip_seq_len: int = 64,
        sync_seq_len: int = 192,
        text_seq_len: int = TEXT_SEQ_LEN,
        clip_dim: int = CLIP_DIM,
        sync_dim: int = SYNC_DIM,
        text_dim: int = TEXT_DIM,
        mlp_ratio: float = 4.0,
        v2: bool = False,
        latent_mean: torch.Tensor | None = None,
        latent_std: torch.Tensor | None = None,
        empty_string_feat: torch.Tensor | None = None,
        activation_checkpointing: bool | str = False,
    ):
        super().__init__()
        if activation_checkpointing not in CHECKPOINTING_MODES:
            raise ValueError(f"MMAudio.activation_checkpointing={activation_checkpointing!r}; use one of "
                             f"{CHECKPOINTING_MODES}")
        if hidden_dim % num_heads or hidden_dim // num_heads % 2:
            raise ValueError(f"hidden_dim {hidden_dim} must split into {num_heads} even-sized heads")
        if not 0 <= fused_depth < depth:
            raise ValueError(f"need 0 <= fused_depth ({fused_depth}) < depth ({depth})")
        self.v2 = v2
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.depth = depth
        self.fused_depth = fused_depth
        self.activation_checkpointing = activation_checkpointing
        self._latent_seq_len = latent_seq_len
        self._clip_seq_len = clip_seq_len
        self._sync_seq_len = sync_seq_len
        self._text_seq_len = text_seq_len
        act: type[nn.Module] = nn.SiLU if v2 else nn.SELU
        d = hidden_dim

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(latent_dim, d, kernel_size=7, padding=3),
            act(),
            ConvMLP(d, d * 4, kernel_size=7),
        )
        # v2 inserts a SiLU after the clip/text Linears, which shifts their MLPs to index 2.
        clip_layers = [nn.Linear(clip_dim, d), ConvMLP(d, d * 4, kernel_size=3)]
        text_layers = [nn.Linear(text_dim, d), MLP(d, d * 4)]
        if v2:
            clip_layers.insert(1, nn.SiLU())
            text_layers.insert(1, nn.SiLU())
        self.clip_input_proj = nn.Sequential(*clip_layers)
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(sync_dim, d, kernel_size=7, padding=3),
            act(),
            ConvMLP(d, d * 4, kernel_size=3),
        )
        self.text_input_proj = nn.Sequential(*text_layers)

        self.clip_cond_proj = nn.Linear(d, d)
        self.text_cond_proj = nn.Linear(d, d)
        self.global_cond_mlp = MLP(d, d * 4)
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_TOKENS_PER_SEGMENT, sync_dim))
        self.final_layer = FinalBlock(d, latent_dim)
        if v2:
            self.t_embed = TimestepEmbedder(d, frequency_embedding_size=d, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(d, frequency_embedding_size=256, max_period=10000)
        joint_depth = depth - fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(d, num_heads, mlp_ratio, pre_only=(i == joint_depth - 1))
            for i in range(joint_depth)
        )
        self.fused_blocks = nn.ModuleList(
            MMDitSingleBlock(d, num_heads, mlp_ratio, kernel_size=3) for _ in range(fused_depth)
        )

        # NaN until dataset statistics (latents) or the stores' null-text record (the text
        # encoder's encoding of '') or a checkpoint provide them: never silently zeros.
        if latent_mean is None:
            latent_mean = torch.full((latent_dim,), float("nan"))
        if latent_std is None:
            latent_std = torch.full((latent_dim,), float("nan"))
        if empty_string_feat is None:
            empty_string_feat = torch.full((text_seq_len, text_dim), float("nan"))
        self.latent_mean = nn.Parameter(latent_mean.reshape(1, 1, latent_dim), requires_grad=False)
        self.latent_std = nn.Parameter(latent_std.reshape(1, 1, latent_dim), requires_grad=False)
        self.empty_string_feat = nn.Parameter(
            empty_string_feat.reshape(text_seq_len, text_dim), requires_grad=False
        )
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, sync_dim))

        self.initialize_weights()
        self.init_buffers()

    # ----------------------------------------------------------------------------- setup
    def initialize_weights(self) -> None:
        """The reference initialisation: xavier Linears, zeroed adaLN gates and output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        zeroed = [self.final_layer.adaLN_modulation[-1], self.final_layer.conv]
        for block in self.joint_blocks:
            for sub in (block.latent_block, block.clip_block, block.text_block):
                zeroed.append(sub.adaLN_modulation[-1])
        zeroed.extend(block.adaLN_modulation[-1] for block in self.fused_blocks)
        for module in zeroed:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        for param in (self.sync_pos_emb, self.empty_clip_feat, self.empty_sync_feat):
            nn.init.zeros_(param)

    def init_buffers(self) -> None:
        """(Re)builds the non-persistent tables (RoPE, sync upsampling index, t frequencies).

        They are computed on the CPU in float32, as for the released model, then moved to the
        weights' device. Call it after `to_empty()`, which leaves buffers uninitialised.
        """
        if self._sync_seq_len % SYNC_TOKENS_PER_SEGMENT:
            raise ValueError(
                f"sync_seq_len {self._sync_seq_len} is not a whole number of "
                f"{SYNC_TOKENS_PER_SEGMENT}-token Synchformer segments"
            )
        tables = self._rope_tables()
        tables["sync_index"] = sync_upsample_index(self._sync_seq_len, self._latent_seq_len)
        device = self.latent_mean.device
        for name, table in tables.items():
            if device.type != "meta":
                table = table.to(device)
            self.register_buffer(name, table, persistent=False)
        freqs = self.t_embed.compute_freqs()
        self.t_embed.freqs = freqs if device.type == "meta" else freqs.to(device)

    def _rope_tables(self) -> dict[str, torch.Tensor]:
        head_dim = self.hidden_dim // self.num_heads
        return {
            "latent_rot": rope_rotations(self._latent_seq_len, head_dim),
            "clip_rot": rope_rotations(
                self._clip_seq_len, head_dim, freq_scaling=1.0 * self._latent_seq_len / self._clip_seq_len
            ),
        }

    def released_tables(self) -> dict[str, torch.Tensor]:
        """The recomputed tables a released file of this variant stores (and its loader drops):
        the RoPE tables in v1 files, the timestep frequencies in v2 files; CPU float32."""
        if self.v2:
            return {"t_embed.freqs": self.t_embed.compute_freqs()}
        return self._rope_tables()

    def released_state_dict(self, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``state`` (default: this network's weights) in the released file's exact layout.

        The released mmaudio_*.pth files hold, besides the weights, the tables the reference's
        loader drops: v1 files the RoPE tables right after ``empty_sync_feat``, the v2 file the
        timestep frequencies right before ``t_embed.mlp.0.weight``. Writing them too makes the
        keys, order, shapes and dtypes equal to the released files', for tools that compare them.
        """
        state = self.state_dict() if state is None else state
        tables = self.released_tables()
        anchor = "t_embed.mlp.0.weight" if self.v2 else "empty_sync_feat"
        released: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if self.v2 and key == anchor:
                released.update(tables)
            released[key] = value.detach()
            if not self.v2 and key == anchor:
                released.update(tables)
        if len(released) != len(state) + len(tables):
            raise KeyError(f"the state dict has no {anchor!r}: it is not this network's")
        return released

    def update_seq_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int) -> None:
        """Adapts the network to another clip duration (see SequenceConfig.for_mode)."""
        self._latent_seq_len = latent_seq_len
        self._clip_seq_len = clip_seq_len
        self._sync_seq_len = sync_seq_len
        self.init_buffers()

    def weights_mismatch(self, state_dict: dict[str, torch.Tensor]) -> str | None:
        """How a state dict's keys and shapes differ from this network's, in one short line
        (counts and the first few of each kind); None when it fits. torch's own message lists
        every mismatched tensor: 100+ lines for another variant."""
        own = {k: v for k, v in self.state_dict().items() if k not in RECOMPUTED_KEYS}
        given = {k: v for k, v in state_dict.items() if k not in RECOMPUTED_KEYS}
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        shaped = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in given and tuple(given[k].shape) != tuple(v.shape)]
        parts = [f"{kind}: {len(found)} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
                 for kind, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("keys of another shape, given vs this network's", shaped)) if found]
        if not parts:
            return None
        return (f"the weights do not fit this network ({'; '.join(parts)}): they are of another "
                "network variant (check get_network.name)")

    def load_weights(self, state_dict: dict[str, torch.Tensor], assign: bool = False) -> None:
        """Strictly loads a released state dict, ignoring the tables this module recomputes.

        ``assign`` adopts the given tensors as the parameters (no copy), for a module built on
        the meta device.
        """
        state = {k: v for k, v in state_dict.items() if k not in RECOMPUTED_KEYS}
        mismatch = self.weights_mismatch(state)
        if mismatch is not None:
            raise RuntimeError(mismatch)
        self.load_state_dict(state, strict=True, assign=assign)
        if assign:
            self.init_buffers()

    # --------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    @property
    def latent_seq_len(self) -> int:
        return self._latent_seq_len

    @property
    def clip_seq_len(self) -> int:
        return self._clip_seq_len

    @property
    def sync_seq_len(self) -> int:
        return self._sync_seq_len

    @property
    def text_seq_len(self) -> int:
        return self._text_seq_len

    # ------------------------------------------------------------------- latent stats
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std, in place (as the reference), returning x."""
        return x.sub_(self.latent_mean).div_(self.latent_std)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """x * std + mean, in place (as the reference), returning x."""
        return x.mul_(self.latent_std).add_(self.latent_mean)

    # ---------------------------------------------------------------------- forward
    def _check_length(self, name: str, tensor: torch.Tensor, expected: int) -> None:
        if tensor.shape[1] != expected:
            raise ValueError(
                f"{name} has sequence length {tensor.shape[1]} (shape {tuple(tensor.shape)}) but "
                f"the network expects {expected}; call update_seq_lengths for another duration"
            )

    def preprocess_conditions(
        self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor
    ) -> PreprocessedConditions:
        """Projects clip (B,64,1024), sync (B,192,768) and text (B,77,1024) features."""
        self._check_length("clip_f", clip_f, self._clip_seq_len)
        self._check_length("sync_f", sync_f, self._sync_seq_len)
        self._check_length("text_f", text_f, self._text_seq_len)
        batch = clip_f.shape[0]
        segments = self._sync_seq_len // SYNC_TOKENS_PER_SEGMENT
        sync_f = sync_f.view(batch, segments, SYNC_TOKENS_PER_SEGMENT, -1) + self.sync_pos_emb
        sync_f = sync_f.flatten(1, 2)

        clip_f = self.clip_input_proj(clip_f)
        sync_f = self.sync_input_proj(sync_f)
        text_f = self.text_input_proj(text_f)
        sync_f = sync_f[:, self.sync_index]  # nearest-exact upsampling to the latent rate

        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))
        return PreprocessedConditions(clip_f, sync_f, text_f, clip_f_c, text_f_c)

    def _run(self, block: nn.Module, *args: Any) -> Any:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            if self.activation_checkpointing == "selective":
                return checkpoint(block, *args, use_reentrant=False, context_fn=_keep_products_context)
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def predict_flow(
        self, latent: torch.Tensor, t: torch.Tensor, conditions: PreprocessedConditions
    ) -> torch.Tensor:
        """Velocity (B, L, C) of the normalized latent (B, L, C) at times t (B,)."""
        self._check_length("latent", latent, self._latent_seq_len)
        clip_f, text_f = conditions.clip_f, conditions.text_f
        latent = self.audio_input_proj(latent)
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)
        global_c = self.t_embed(t).unsqueeze(1) + global_c.unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + conditions.sync_f  # (B, L, D)

        for block in self.joint_blocks:
            latent, clip_f, text_f = self._run(
                block, latent, clip_f, text_f, global_c, extended_c, self.latent_rot, self.clip_rot
            )
        for block in self.fused_blocks:
            latent = self._run(block, latent, extended_c, self.latent_rot)
        # Conditioned on global_c, not extended_c (reference issue #55), as the weights expect.
        return self.final_layer(latent, global_c)

    def forward(self, latent: torch.Tensor, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_f))

    # ------------------------------------------------------------------ empty / CFG
    def get_empty_string_sequence(self, batch: int) -> torch.Tensor:
        return self.empty_string_feat.unsqueeze(0).expand(batch, -1, -1)

    def get_empty_clip_sequence(self, batch: int) -> torch.Tensor:
        return self.empty_clip_feat.unsqueeze(0).expand(batch, self._clip_seq_len, -1)

    def get_empty_sync_sequence(self, batch: int) -> torch.Tensor:
        return self.empty_sync_feat.unsqueeze(0).expand(batch, self._sync_seq_len, -1)

    def get_empty_conditions(
        self, bs: int, negative_text_features: torch.Tensor | None = None
    ) -> PreprocessedConditions:
        """Conditions of the unconditional branch of CFG, computed at batch 1 and expanded.

        ``negative_text_features`` (B, 77, 1024) replaces the empty string, per sample.
        """
        text = negative_text_features
        if text is None:
            text = self.get_empty_string_sequence(1)
        cond = self.preprocess_conditions(
            self.get_empty_clip_sequence(1), self.get_empty_sync_sequence(1), text
        )
        cond.clip_f = cond.clip_f.expand(bs, -1, -1)
        cond.sync_f = cond.sync_f.expand(bs, -1, -1)
        cond.clip_f_c = cond.clip_f_c.expand(bs, -1)
        if negative_text_features is None:
            cond.text_f = cond.text_f.expand(bs, -1, -1)
            cond.text_f_c = cond.text_f_c.expand(bs, -1)
        return cond

    def ode_wrapper(
        self,
        t: torch.Tensor | float,
        latent: torch.Tensor,
        conditions: PreprocessedConditions,
        empty_conditions: PreprocessedConditions,
        cfg_strength: float,
    ) -> torch.Tensor:
        """The sampled velocity: w * v(cond) + (1 - w) * v(empty), or v(cond) when w < 1."""
        t = t * torch.ones(len(latent), device=latent.device, dtype=latent.dtype)
        if cfg_strength < 1.0:
            return self.predict_flow(latent, t, conditions)
        return cfg_strength * self.predict_flow(latent, t, conditions) + (
            1 - cfg_strength
        ) * self.predict_flow(latent, t, empty_conditions)


@dataclasses.dataclass(frozen=True)
class Variant:
    """Architecture of a named network; sequence lengths come from the audio mode."""

    mode: str
    latent_dim: int
    num_heads: int
    depth: int
    fused_depth: int
    v2: bool = False
    head_dim: int = 64

    @property
    def hidden_dim(self) -> int:
        return self.head_dim * self.num_heads


VARIANTS: dict[str, Variant] = {
    "small_16k": Variant("16k", 20, num_heads=7, depth=12, fused_depth=8),
    "small_44k": Variant("44k", 40, num_heads=7, depth=12, fused_depth=8),
    "medium_44k": Variant("44k", 40, num_heads=14, depth=12, fused_depth=8),
    "large_44k": Variant("44k", 40, num_heads=14, depth=21, fused_depth=14),
    "large_44k_v2": Variant("44k", 40, num_heads=14, depth=21, fused_depth=14, v2=True),
    # Same code at ~2 M parameters for CPU tests and the example pipeline: two heads of 32,
    # one full joint block, one pre-only joint block and one fused block.
    "tiny_16k": Variant("16k", 20, num_heads=2, depth=3, fused_depth=1, head_dim=32),
    "tiny_44k": Variant("44k", 40, num_heads=2, depth=3, fused_depth=1, head_dim=32),
}


def network_kwargs(name: str, duration: float = 8.0) -> dict[str, Any]:
    """Constructor arguments of the variant ``name`` for clips of ``duration`` seconds."""
    if name not in VARIANTS:
        raise ValueError(f"unknown network {name!r}; expected one of {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    seq = SequenceConfig.for_mode(variant.mode, duration)
    return dict(latent_dim=variant.latent_dim, hidden_dim=variant.hidden_dim, depth=variant.depth,
                fused_depth=variant.fused_depth, num_heads=variant.num_heads,
                latent_seq_len=seq.latent_seq_len, clip_seq_len=seq.clip_seq_len,
                sync_seq_len=seq.sync_seq_len, text_seq_len=seq.text_seq_len, v2=variant.v2)
