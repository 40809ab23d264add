"""Conditioning encoders: CLIP frame and caption features, Synchformer sync features."""

from mmgin.vision.clip import ClipEncoder, get_clip
from mmgin.vision.synchformer import Synchformer, get_synchformer

__all__ = ["ClipEncoder", "Synchformer", "get_clip", "get_synchformer"]
