"""Sampling audio latents from the flow network: Euler (or adaptive) ODE with classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgin.model import FlowMatching, MMAudio

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


def fill_empty(network: MMAudio, conditions: Conditions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clip, sync, text) on the network's device, the learnt empty features where absent.

    This is what training teaches for a missing modality (video dropped or audio-only data,
    text dropped): the empty clip/sync features and the empty-string text feature.
    """
    device, bs = network.device, conditions.batch_size
    video = conditions.video_exist.to(device).view(-1, 1, 1)
    text = conditions.text_exist.to(device).view(-1, 1, 1)
    empty_clip = network.get_empty_clip_sequence(bs)
    empty_sync = network.get_empty_sync_sequence(bs)
    empty_text = network.get_empty_string_sequence(bs)

    def pick(features: torch.Tensor | None, empty: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if features is None:
            return empty.clone()
        return torch.where(keep, features.to(device, empty.dtype), empty)

    return (pick(conditions.clip, empty_clip, video), pick(conditions.sync, empty_sync, video),
            pick(conditions.text, empty_text, text))


@torch.inference_mode()
def generate_latents(
    network: MMAudio,
    flow: FlowMatching,
    conditions: Conditions,
    generator: torch.Generator,
    cfg_strength: float = DEFAULT_CFG_STRENGTH,
    autocast_dtype: torch.dtype | None = torch.bfloat16,
) -> torch.Tensor:
    """Unnormalized latents [B, L, C] (ready for the VAE decoder), from noise drawn with `generator`.

    As in the reference: x0 ~ N(0, I) of shape (B, L, C), the conditions are projected once,
    the ODE runs from t=0 to t=1 with w·v(cond) + (1-w)·v(empty), then the latent statistics
    are undone. Autocast (bf16 by default) is used on CUDA only.
    """
    device = network.device
    clip, sync, text = fill_empty(network, conditions)
    x0 = torch.randn(
        conditions.batch_size, network.latent_seq_len, network.latent_dim,
        device=device, generator=generator,
    )
    use_autocast = autocast_dtype is not None and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                        enabled=use_autocast):
        cond = network.preprocess_conditions(clip, sync, text)
        empty = network.get_empty_conditions(conditions.batch_size)
        x1 = flow.to_data(lambda t, x: network.ode_wrapper(t, x, cond, empty, cfg_strength), x0)
    return network.unnormalize(x1.float())
