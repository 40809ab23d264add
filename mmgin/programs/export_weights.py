"""The ExportWeights program: the network of any checkpoint as a released-format weights file.

    python launch.py --gin_file=gin/model/small_16k.gin --gin_file=gin/export_weights.gin \\
        --gin_param="CHECKPOINT = 'output/small_16k/checkpoints/ckpt_000300000.pth'" \\
        --gin_param="OUTPUT = 'output/small_16k/small_16k_300k.pth'"

The file has exactly the keys, order, shapes and dtypes of the released mmaudio_<name>.pth, so
the reference's demo and every tool built on the released format load it (strictly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import gin
import torch
from absl import logging

from mmgin import dist, io
from mmgin.model import MMAudio, load_weights_into


@gin.configurable
class ExportWeights:
    """Writes the network weights of ``checkpoint`` to ``output`` in the released layout.

    ``checkpoint`` is any file mmgin.model.loading reads: an mmgin training checkpoint, a
    reference <exp>_ckpt_last.pth, or a weights file (re-exported as is). ``network`` (a
    factory, e.g. `@get_network` with a gin/model/ fragment) is the variant the weights belong
    to: they are loaded into it strictly first, so a mismatch stops before anything is written.
    """

    def __init__(
        self,
        checkpoint: str | Path = gin.REQUIRED,
        output: str | Path = gin.REQUIRED,
        network: Callable[[], MMAudio] = gin.REQUIRED,
    ):
        self.checkpoint = Path(checkpoint)
        self.output = Path(output)
        self.make_network = network

    def run(self) -> None:
        if not dist.is_main():
            return
        with torch.device("meta"):  # the weights replace every tensor: no initialisation
            network = self.make_network()
        load_weights_into(network, self.checkpoint, "ExportWeights.checkpoint", assign=True)
        released = network.released_state_dict({k: v.float() for k, v in network.state_dict().items()})
        io.save_torch(released, self.output)
        logging.info("wrote %s: the network of %s in the released layout (%d tensors)",
                     self.output, self.checkpoint, len(released))
