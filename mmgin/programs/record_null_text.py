"""The RecordNullText program: adds the null-text record to stores made without one.

    python launch.py --gin_file=gin/record_null_text.gin \\
        --gin_param="STORES = ['data/memmap-16k/vgg-train', 'data/memmap-16k/audiocaps']"

Extraction records it by itself (mmgin.data.null_text); this program is for stores written by
the reference's scripts or by mmgin before the record existed. It encodes '' once with the
configured text encoder (the released empty_string.pth with the full CLIP, as extraction does)
and writes it into each store; nothing else in the stores is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import gin
import torch
from absl import logging

from mmgin import dist
from mmgin import precision as numerics
from mmgin.data import null_text
from mmgin.data.extraction import ENCODER_PRECISIONS
from mmgin.data.store import FeatureStore, StoreError


@gin.configurable
class RecordNullText:
    """Writes ``clip``'s encoding of '' into every store of ``stores`` (rank 0 only).

    A store that already records a different feature is refused unless ``overwrite``: its text
    features may come from another encoder, which a new record would hide, not fix. ``precision``
    ('fp32' or 'bf16') and ``tf32`` should be the extraction's.
    """

    def __init__(
        self,
        stores: Sequence[str | Path] = gin.REQUIRED,
        clip=gin.REQUIRED,
        precision: str = "fp32",
        tf32: bool = True,
        overwrite: bool = False,
    ):
        if isinstance(stores, (str, Path)):
            raise ValueError("RecordNullText.stores: give a list of store directories")
        self.stores = [Path(s) for s in stores]
        for store in self.stores:
            FeatureStore.open(store)  # a missing or broken store stops here, before any encoding
        self.clip = clip
        self.precision = numerics.check("RecordNullText.precision", precision, ENCODER_PRECISIONS)
        self.tf32 = tf32
        self.overwrite = overwrite

    def run(self) -> None:
        if not dist.is_main():
            return
        self.clip.to(dist.info().device)
        with numerics.matmul_tf32(self.tf32):  # as the extraction encoded the captions
            feature = null_text.encode(self.clip, self.precision)
        for store in self.stores:
            self._record(store, feature)

    def _record(self, store: Path, feature: torch.Tensor) -> None:
        existing = null_text.read(store)
        if existing is not None and torch.equal(existing, feature[0]):
            logging.info("%s already records this null text; unchanged", store)
            return
        if existing is not None and not self.overwrite:
            raise StoreError(
                f"{null_text.record_path(store)} records another null text (another text encoder?); "
                "set RecordNullText.overwrite = True to replace it"
            )
        null_text.write(store, feature)
        logging.info("recorded the null text (%s, %s) in %s", tuple(feature.shape[1:]), null_text.FILE_NAME, store)
