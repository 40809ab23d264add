"""The null-text record of a store: its text encoder's encoding of the empty string.

MMAudio's "no text" condition is not zeros: the reference trains and samples with CLIP('')
(its ext_weights/empty_string.pth) wherever a caption is absent or dropped for classifier-free
guidance. A network trained here must learn the same condition from the same encoder that made
its text features, so every extraction records that encoding inside the store, as
``<store>/empty_string.pth``: a bare float32 tensor of shape (1, 77, D), the released file's
layout. TensorDict ignores the file, so the store stays readable by ``TensorDict.load_memmap``
and by the reference trainer.

Stores extracted before the record existed get it without re-extracting, through
``gin/record_null_text.gin`` (the `RecordNullText` program).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from mmgin import dist, io
from mmgin import precision as numerics
from mmgin.data.store import StoreError

FILE_NAME = "empty_string.pth"


def record_path(store: str | Path) -> Path:
    return Path(store) / FILE_NAME


def add_record_command(stores: Iterable[str | Path], overwrite: bool = False) -> str:
    """The one command that adds the record to existing stores (full CLIP; tiny variant noted)."""
    listed = ", ".join(f"'{s}'" for s in stores)
    replace = " --gin_param=\"RecordNullText.overwrite = True\"" if overwrite else ""
    return (
        f"python launch.py --gin_file=gin/record_null_text.gin --gin_param=\"STORES = [{listed}]\"{replace} "
        "(add --gin_file=gin/vision/tiny.gin for stores made with the tiny test encoders)"
    )


def encode(clip, precision: str) -> torch.Tensor:
    """(1, 77, D) float32, the record of ``clip`` run at ``precision`` on this rank's device:
    the released empty_string.pth when the encoder loaded it, else '' encoded exactly as the
    captions are (the caller sets TF32 as for the captions)."""
    with torch.inference_mode(), numerics.autocast(precision, dist.info().device):
        return clip.empty_string_feature().float().cpu()


def write(store: str | Path, feature: torch.Tensor) -> None:
    """Records ``feature`` ((1, 77, D) or (77, D)) in ``store``, atomically, as float32."""
    value = feature.detach().to("cpu", torch.float32).reshape(1, *feature.shape[-2:]).contiguous()
    io.save_torch(value, record_path(store))


def read(store: str | Path, text_shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """The store's record as a (77, D) float32 tensor, or None when it has none.

    ``text_shape`` (77, D), when given, must match: a record of another encoder width is an error.
    """
    path = record_path(store)
    if not path.is_file():
        return None
    fix = f"write it again with {add_record_command([store])}"
    try:
        value = io.load_torch(path)
    except Exception as e:  # a truncated or foreign file
        raise StoreError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:200]}); {fix}") from None
    if not isinstance(value, torch.Tensor) or value.dim() != 3 or value.shape[0] != 1:
        raise StoreError(f"{path} is not a (1, 77, D) tensor; {fix}")
    if text_shape is not None and tuple(value.shape[1:]) != tuple(text_shape):
        raise StoreError(
            f"{path} has shape {tuple(value.shape)} but the store's text features are {tuple(text_shape)}; {fix}")
    return value[0].float()


def agreed(stores: Iterable[tuple[str | Path, torch.Tensor | None]]) -> torch.Tensor:
    """The one null-text feature that every given store records, bit for bit.

    A store without a record, or stores whose records differ (made by different text encoders),
    is an error naming them and the command that (re)writes the record.
    """
    stores = list(stores)
    missing = [str(path) for path, value in stores if value is None]
    if missing:
        raise StoreError(
            f"no null-text record ({FILE_NAME}, the text encoder's encoding of '') in "
            f"{', '.join(missing)}: a network trained from scratch needs it as its 'no text' "
            f"condition. Add it without re-extracting: {add_record_command(missing)}"
        )
    first_path, first = stores[0]
    for path, value in stores[1:]:
        if not torch.equal(value, first):
            raise StoreError(
                f"the null-text records of {first_path} and {path} differ: their text features come "
                "from different text encoders, which cannot be trained together. Re-extract one of "
                f"them with the other's encoder, or, if only a record is wrong, rewrite it with "
                f"{add_record_command([path], overwrite=True)}"
            )
    return first
