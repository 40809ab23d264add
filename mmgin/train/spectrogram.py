"""Mel spectrograms as colour images for TensorBoard, without a plotting library."""

from __future__ import annotations

import numpy as np
import torch

# Anchor colours of the viridis colour map (perceptually uniform, colour-blind friendly),
# interpolated linearly between equally spaced anchors.
_VIRIDIS = np.array([
    (68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142),
    (31, 158, 137), (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37),
], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] to RGB uint8 (shape + (3,))."""
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    position = values * (len(_VIRIDIS) - 1)
    low = np.floor(position).astype(np.int64).clip(0, len(_VIRIDIS) - 2)
    frac = (position - low)[..., None]
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    return rgb.round().astype(np.uint8)


def spectrogram_image(mel: torch.Tensor) -> np.ndarray:
    """A (n_mels, frames) log-mel as an HWC uint8 image, low frequencies at the bottom,
    scaled to its own min..max."""
    if mel.dim() != 2:
        raise ValueError(f"expected a (n_mels, frames) spectrogram, got shape {tuple(mel.shape)}")
    values = mel.detach().float().cpu().numpy()
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.ascontiguousarray(colormap(scaled[::-1]))
