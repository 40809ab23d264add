"""Validation: the loss on a held-out store, and generated audio for listening and metrics.

Both draw from fresh clones of the initial step generator, so every pass sees the same noise
and the numbers compare across iterations (the reference's eval RNG clone, FACTS §11.6).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from mmgin import dist
from mmgin.data.loader import DistributedBatchLoader
from mmgin.model import FlowMatching, MMAudio
from mmgin.train.batches import to_device
from mmgin.train.metrics import NUM_T_BINS, LossByT
from mmgin.train.step import draw_noise, loss_inputs, with_empty_features


@torch.no_grad()
def validation_loss(
    loss_fn: Callable[..., torch.Tensor],
    network: MMAudio,
    flow: FlowMatching,
    loader: DistributedBatchLoader,
    generator: torch.Generator,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    null_condition_probability: float,
    independent_video_dropout: bool,
) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss over all ranks, loss-by-t sums, counts) of one pass over the validation set.

    The loader is rewound to epoch 0 so every pass visits the items in the same order.
    """
    was_training = network.training
    network.eval()
    loader.set_epoch(0)  # the previous pass ended in epoch 1: back to the same order
    bins = LossByT(device)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for cpu_batch in loader:
        batch = to_device(cpu_batch, device)
        noise = draw_noise(batch["a_mean"], flow, generator, null_condition_probability,
                           independent_video_dropout)
        with autocast():
            per_sample = loss_fn(**loss_inputs(batch, noise)).double()
        finite = torch.isfinite(per_sample)
        total[0] += torch.where(finite, per_sample, torch.zeros_like(per_sample)).sum()
        total[1] += finite.sum()
        bins.add(noise.t, per_sample, valid=finite)
    network.train(was_training)
    packed = dist.all_reduce_sum(torch.cat([total, bins.sums, bins.counts]))
    host = packed.cpu().numpy()
    mean = host[0] / host[1] if host[1] > 0 else float("nan")
    return mean, host[2:2 + NUM_T_BINS], host[2 + NUM_T_BINS:]


@torch.no_grad()
def generate(
    network: MMAudio,
    flow: FlowMatching,
    batch: dict,
    generator: torch.Generator,
    cfg_strength: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> torch.Tensor:
    """Unnormalized latents (B, L, C) for a device batch: Euler with CFG from noise drawn
    from `generator`, conditioned on the batch's features (missing modalities empty)."""
    clip, sync, text = with_empty_features(
        network, batch["clip_features"], batch["sync_features"], batch["text_features"],
        keep_clip=batch["video_exist"], keep_sync=batch["video_exist"], keep_text=batch["text_exist"],
    )
    size = clip.shape[0]
    x0 = torch.empty((size, network.latent_seq_len, network.latent_dim), device=clip.device)
    x0.normal_(generator=generator)
    with autocast():
        conditions = network.preprocess_conditions(clip, sync, text)
        empty = network.get_empty_conditions(size)
        x1 = flow.to_data(lambda t, x: network.ode_wrapper(t, x, conditions, empty, cfg_strength), x0)
    return network.unnormalize(x1.float())


def shard_indices(count: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This rank's share of items 0..count-1 (strided), in batches."""
    mine = list(range(count))[rank::world_size]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
