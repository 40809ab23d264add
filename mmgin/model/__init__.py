"""The MMAudio flow network, its sequence lengths and flow matching (see README.md here)."""

from mmgin.model.factory import (
    get_network,
    load_checkpoint,
    network_from_state_dict,
    network_kwargs,
)
from mmgin.model.flow_matching import FlowMatching
from mmgin.model.network import VARIANTS, MMAudio, PreprocessedConditions
from mmgin.model.sequence import SequenceConfig

__all__ = [
    "VARIANTS",
    "FlowMatching",
    "MMAudio",
    "PreprocessedConditions",
    "SequenceConfig",
    "get_network",
    "load_checkpoint",
    "network_from_state_dict",
    "network_kwargs",
]
