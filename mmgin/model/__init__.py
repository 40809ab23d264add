"""The MMAudio flow network, its sequence lengths and flow matching (see README.md here)."""

from mmgin.model.factory import get_network
from mmgin.model.flow_matching import FlowMatching
from mmgin.model.loading import (
    NetworkFileError,
    NetworkWeights,
    load_network,
    load_weights_into,
    network_from_state_dict,
    read_network_weights,
)
from mmgin.model.network import VARIANTS, MMAudio, PreprocessedConditions, network_kwargs
from mmgin.model.sequence import SequenceConfig

__all__ = [
    "VARIANTS",
    "FlowMatching",
    "MMAudio",
    "NetworkFileError",
    "NetworkWeights",
    "PreprocessedConditions",
    "SequenceConfig",
    "get_network",
    "load_network",
    "load_weights_into",
    "network_from_state_dict",
    "network_kwargs",
    "read_network_weights",
]
