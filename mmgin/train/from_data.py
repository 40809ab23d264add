"""What a network built from scratch takes from its training data before the first step: the
latent statistics and the null-text feature (weights and checkpoints carry their own, which are
kept), and the check that the data's latents fit the network."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from absl import logging
from torch.utils.data import Dataset

from mmgin import dist
from mmgin.data import null_text
from mmgin.model import MMAudio


def check_latent_shapes(network: MMAudio, **datasets: Dataset | None) -> None:
    """Each dataset (by its Train setting) has latents of the network's (length, channels)."""
    expected = (network.latent_seq_len, network.latent_dim)
    for role, dataset in datasets.items():
        shape = tuple(getattr(dataset, "latent_shape", expected))
        if dataset is not None and shape != expected:
            raise ValueError(
                f"Train.{role} has latents of shape {shape} but the network expects {expected} "
                "(latent length, channels): the stores were extracted for another audio mode "
                "or duration than the network's"
            )


def set_latent_statistics(network: MMAudio, train_dataset: Dataset) -> None:
    """Computed once on rank 0 (the dataset's `latent_statistics`) and broadcast."""
    if torch.isfinite(network.latent_mean).all() and torch.isfinite(network.latent_std).all():
        dist.log_main("latent statistics come from the network weights")
        return
    compute = getattr(train_dataset, "latent_statistics", None)
    if compute is None:
        raise ValueError(
            "the network has no latent statistics and Train.train_dataset cannot compute them; "
            "use a DatasetMixture, or start from weights that carry them"
        )
    stats = compute() if dist.is_main() else None
    mean, std = dist.broadcast_object(stats)
    with torch.no_grad():
        network.latent_mean.copy_(mean.reshape(network.latent_mean.shape))
        network.latent_std.copy_(std.reshape(network.latent_std.shape))
    dist.log_main("latent statistics from the training data: mean %s, std %s",
                  [round(x, 4) for x in mean.tolist()[:4]], [round(x, 4) for x in std.tolist()[:4]])


def _null_text_records(network: MMAudio, datasets: Sequence[Dataset]) -> list[tuple[Path, torch.Tensor | None]]:
    """(store, null-text record or None) of each dataset that reads a feature store."""
    text_shape = tuple(network.empty_string_feat.shape)
    stores = [d.store.memmap_dir for d in datasets if getattr(d, "store", None) is not None]
    return [(path, null_text.read(path, text_shape)) for path in stores]


def set_null_text(network: MMAudio, train_dataset: Dataset, val_dataset: Dataset | None) -> None:
    """A network built from scratch takes its 'no text' feature from the stores' record.

    All training stores must record the same one (and the validation store, if it records
    one). Released weights and checkpoints keep their own: a store recording another one
    is then worth a warning (fine-tuning on features of another text encoder).
    """
    training = _null_text_records(network, getattr(train_dataset, "datasets", [train_dataset]))
    validation = _null_text_records(network, [val_dataset] if val_dataset is not None else [])
    if torch.isfinite(network.empty_string_feat).all():
        own = network.empty_string_feat.detach().cpu()
        differing = [str(p) for p, v in training + validation if v is not None and not torch.equal(v, own)]
        if differing:
            logging.warning("the null text of the network's weights differs from the record of %s: "
                            "their text features may come from another text encoder", ", ".join(differing))
        return
    if not training:
        raise ValueError(
            "the network has no null-text feature and Train.train_dataset reads no feature store "
            "to take it from; train on stores, or start from weights that carry it"
        )
    value = null_text.agreed(training)
    recorded = [(p, v) for p, v in validation if v is not None]
    null_text.agreed(training[:1] + recorded)
    with torch.no_grad():
        network.empty_string_feat.copy_(value)
    dist.log_main("null-text feature from the stores' record (%s)", null_text.FILE_NAME)
