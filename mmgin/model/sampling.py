"""Sampling audio latents from the flow network: the ODE with classifier-free guidance.

The one sampler of every program: Train's validation samples and Evaluate take the same path,
so the same weights, generator seed and precision give the same latents in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from mmgin.precision import autocast
from mmgin.model.flow_matching import FlowMatching
from mmgin.model.network import MMAudio

DEFAULT_CFG_STRENGTH = 4.5


@dataclass
class Conditions:
    """Raw conditioning features of a batch; rows whose modality is absent get the empty features.

    clip [B, 64, 1024], sync [B, 192, 768], text [B, 77, 1024]; None means absent for every row.
    """

    clip: torch.Tensor | None
    sync: torch.Tensor | None
    text: torch.Tensor | None
    video_exist: torch.Tensor  # bool [B]
    text_exist: torch.Tensor  # bool [B]

    @property
    def batch_size(self) -> int:
        return int(self.video_exist.shape[0])

    @classmethod
    def from_batch(cls, batch: Mapping[str, torch.Tensor]) -> Conditions:
        """The conditions of a dataset batch (its features and existence masks)."""
        return cls(batch["clip_features"], batch["sync_features"], batch["text_features"],
                   batch["video_exist"], batch["text_exist"])


def fill_empty(network: MMAudio, conditions: Conditions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clip, sync, text) on the network's device, the learnt empty features where absent.

    This is what training teaches for a missing modality (video dropped or audio-only data,
    text dropped). Features take the dtype of the network's empty features (its parameters'),
    so a store's bf16 features are widened rather than the learnt features rounded.
    """
    device, size = network.device, conditions.batch_size
    video = conditions.video_exist.to(device).view(-1, 1, 1)
    text = conditions.text_exist.to(device).view(-1, 1, 1)

    def pick(features: torch.Tensor | None, empty: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if features is None:
            return empty.clone()
        return torch.where(keep, features.to(device, empty.dtype), empty)

    return (pick(conditions.clip, network.get_empty_clip_sequence(size), video),
            pick(conditions.sync, network.get_empty_sync_sequence(size), video),
            pick(conditions.text, network.get_empty_string_sequence(size), text))


@torch.no_grad()
def generate_latents(
    network: MMAudio,
    flow: FlowMatching,
    conditions: Conditions,
    generator: torch.Generator,
    cfg_strength: float = DEFAULT_CFG_STRENGTH,
    precision: str = "bf16",
) -> torch.Tensor:
    """Unnormalized latents [B, L, C] (ready for the VAE decoder), from noise drawn with `generator`.

    As in the reference: x0 ~ N(0, I) of shape (B, L, C) on the network's device, the
    conditions are projected once, the ODE runs from t=0 to t=1 with w·v(cond) + (1-w)·v(empty),
    then the latent statistics are undone. `precision` autocasts on any device ('fp32': none).
    """
    device = network.device
    clip, sync, text = fill_empty(network, conditions)
    x0 = torch.randn(conditions.batch_size, network.latent_seq_len, network.latent_dim,
                     device=device, generator=generator)
    with autocast(precision, device):
        cond = network.preprocess_conditions(clip, sync, text)
        empty = network.get_empty_conditions(conditions.batch_size)
        x1 = flow.to_data(lambda t, x: network.ode_wrapper(t, x, cond, empty, cfg_strength), x0)
    return network.unnormalize(x1.float())


def generate_audio(
    network: MMAudio,
    flow: FlowMatching,
    codec: torch.nn.Module,
    conditions: Conditions,
    generator: torch.Generator,
    cfg_strength: float = DEFAULT_CFG_STRENGTH,
    precision: str = "bf16",
) -> torch.Tensor:
    """Waveforms (B, T), float32 on the CPU: `generate_latents`, then the decoder (VAE and vocoder)
    of `codec` (an mmgin.audio.AudioCodec) under the same precision, as the reference's inference
    runs both in bf16."""
    latents = generate_latents(network, flow, conditions, generator, cfg_strength, precision)
    with torch.no_grad(), autocast(precision, network.device):
        return codec.decode_latent(latents).float().cpu()
