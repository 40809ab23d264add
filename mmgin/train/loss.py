"""The flow-matching loss of one micro-batch: conditions, CFG dropout, posterior sample, loss.

Random draws come from a per-rank `torch.Generator` on the device, in the reference's order
(FACTS §11.3): posterior noise, t, x0, the video-dropout uniforms (v2: clip then sync), the
text-dropout uniforms. They are drawn eagerly, because a generator argument breaks a
`torch.compile` graph; everything after them is one pure function, compiled whole.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import nn

from mmgin.model import FlowMatching, MMAudio

TENSOR_KEYS = ("a_mean", "a_std", "clip_features", "sync_features", "text_features",
               "video_exist", "text_exist")


@dataclasses.dataclass
class StepNoise:
    """Everything random about one micro-batch, drawn in the reference order."""

    a_randn: torch.Tensor  # (B, L, C) posterior sample noise
    t: torch.Tensor  # (B,) logit-normal times
    x0: torch.Tensor  # (B, L, C) flow noise
    drop_clip: torch.Tensor  # (B,) bool, CFG dropout of the CLIP stream
    drop_sync: torch.Tensor  # (B,) bool, CFG dropout of the sync stream
    drop_text: torch.Tensor  # (B,) bool, CFG dropout of the text stream


def draw_noise(
    a_mean: torch.Tensor,
    flow: FlowMatching,
    generator: torch.Generator,
    null_condition_probability: float,
    independent_video_dropout: bool,
) -> StepNoise:
    """Draws a micro-batch's randomness; `independent_video_dropout` (v2) drops clip and sync
    separately, otherwise both go together as in the reference."""
    batch, device = a_mean.shape[0], a_mean.device
    a_randn = torch.empty_like(a_mean).normal_(generator=generator)
    t = flow.sample_t(batch, generator=generator, device=device)
    x0 = torch.empty_like(a_mean).normal_(generator=generator)
    drop_clip = torch.rand(batch, device=device, generator=generator) < null_condition_probability
    drop_sync = drop_clip
    if independent_video_dropout:
        drop_sync = torch.rand(batch, device=device, generator=generator) < null_condition_probability
    drop_text = torch.rand(batch, device=device, generator=generator) < null_condition_probability
    return StepNoise(a_randn, t, x0, drop_clip, drop_sync, drop_text)


def with_empty_features(
    network: MMAudio,
    clip: torch.Tensor,
    sync: torch.Tensor,
    text: torch.Tensor,
    *,
    keep_clip: torch.Tensor,
    keep_sync: torch.Tensor,
    keep_text: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replaces the rows whose `keep_*` (B,) is False by the network's empty features."""
    def choose(keep: torch.Tensor, features: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        return torch.where(keep.view(-1, 1, 1), features, empty.to(features.dtype))

    return (
        choose(keep_clip, clip, network.empty_clip_feat),
        choose(keep_sync, sync, network.empty_sync_feat),
        choose(keep_text, text, network.empty_string_feat),
    )


class FlowLoss(nn.Module):
    """Per-sample flow-matching loss of a batch, the unit that is compiled and DDP-wrapped.

    Missing modalities and CFG dropout substitute the network's empty features with
    `torch.where` on existence masks (no boolean indexing, so shapes stay static for compile);
    the gradient reaches the learnable empty clip/sync features.
    """

    def __init__(self, network: MMAudio, flow: FlowMatching):
        super().__init__()
        self.network = network
        self.flow = flow

    def forward(
        self,
        a_mean: torch.Tensor,
        a_std: torch.Tensor,
        clip_features: torch.Tensor,
        sync_features: torch.Tensor,
        text_features: torch.Tensor,
        video_exist: torch.Tensor,
        text_exist: torch.Tensor,
        a_randn: torch.Tensor,
        t: torch.Tensor,
        x0: torch.Tensor,
        drop_clip: torch.Tensor,
        drop_sync: torch.Tensor,
        drop_text: torch.Tensor,
    ) -> torch.Tensor:
        net = self.network
        x1 = net.normalize(a_mean + a_std * a_randn)
        xt = self.flow.interpolate(x0, x1, t)
        clip, sync, text = with_empty_features(
            net, clip_features, sync_features, text_features,
            keep_clip=video_exist & ~drop_clip, keep_sync=video_exist & ~drop_sync,
            keep_text=text_exist & ~drop_text,
        )
        pred = net(xt, clip, sync, text, t)
        return self.flow.loss(pred.float(), x0, x1)


def loss_inputs(batch: Mapping[str, torch.Tensor], noise: StepNoise) -> dict[str, torch.Tensor]:
    """Keyword arguments of FlowLoss.forward from a device batch and its noise."""
    inputs = {k: batch[k] for k in TENSOR_KEYS}
    inputs.update({f.name: getattr(noise, f.name) for f in dataclasses.fields(noise)})
    return inputs
