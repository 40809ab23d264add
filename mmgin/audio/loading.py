"""Building the frozen audio components from released checkpoints (or seeded tiny weights).

'full' size without a checkpoint loads the registered released file from the weights directory
(a clear error says how to download it when it is absent); 'tiny' without a checkpoint is
seeded-random, identical in every process, for CPU tests and the example pipeline.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import torch

from mmgin import weights
from mmgin.audio.bigvgan import BIGVGAN_16K, BIGVGAN_V2_44K, BigVGAN, BigVGANConfig, config_from_json, fuse_weight_norm
from mmgin.audio.vae import VAE, VAE_CONFIGS
from mmgin.modules import freeze, load_strict, seeded_normal_

MODES = ("16k", "44k")
SIZES = ("full", "tiny")

VAE_WEIGHTS = {"16k": "vae_16k", "44k": "vae_44k"}
VOCODER_WEIGHTS = {"16k": "bigvgan_16k", "44k": "bigvgan_v2_44k"}
VOCODER_CONFIGS: dict[tuple[str, str], BigVGANConfig] = {
    ("16k", "full"): BIGVGAN_16K,
    ("44k", "full"): BIGVGAN_V2_44K,
    # Tiny widths, same upsampling (so the same hop and output length) and same final layer.
    ("16k", "tiny"): BigVGANConfig(80, BIGVGAN_16K.upsample_rates, BIGVGAN_16K.upsample_kernel_sizes, 128,
                                   resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),), sampling_rate=16000),
    ("44k", "tiny"): BigVGANConfig(128, BIGVGAN_V2_44K.upsample_rates, BIGVGAN_V2_44K.upsample_kernel_sizes, 128,
                                   resblock_kernel_sizes=(3,), resblock_dilation_sizes=((1, 3),),
                                   use_tanh_at_final=False, use_bias_at_final=False, sampling_rate=44100),
}
TINY_SEED = 20250  # fixed so that every process builds the same tiny weights
# Conv weights of the tiny vocoder are N(0, (gain/sqrt(fan_in))²). The residual Snake stacks
# grow the signal steeply with this gain: 0.5 gives near silence, 0.8 saturates the output.
TINY_VOCODER_GAIN = 0.65


def _weights_file(
    mode: str, size: str, checkpoint: str | os.PathLike | None, released: Mapping[str, str]
) -> Path | None:
    """The file (or folder) to load: ``checkpoint``, else the ``released`` file of ``mode`` for
    'full'; None means seeded tiny weights."""
    if mode not in MODES:
        raise ValueError(f"unknown audio mode {mode!r}; choose from {MODES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {SIZES}")
    if checkpoint is None and size == "full":
        checkpoint = released[mode]
    return None if checkpoint is None else weights.resolve(checkpoint)


def _float32(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as float32 (the codec always runs from float32 weights)."""
    return {k: v.to(torch.float32) for k, v in state.items()}


def get_vae(
    mode: str,
    checkpoint: str | os.PathLike | None = None,
    size: str = "full",
    with_encoder: bool = True,
) -> VAE:
    """The frozen mel VAE of ``mode`` with its weight normalisation applied.

    ``checkpoint`` is a bare state dict file (v1-16.pth / v1-44.pth layout), found by
    ``weights.resolve``. Without one, 'full' loads the registered released file and 'tiny' is
    seeded-random.
    """
    checkpoint = _weights_file(mode, size, checkpoint, VAE_WEIGHTS)
    config = VAE_CONFIGS[(mode, size)]
    if checkpoint is None:
        vae = VAE(config, with_encoder=with_encoder)
        std = {n: 1.0 for n, p in vae.named_parameters() if p.ndim == 3}
        seeded_normal_(vae, TINY_SEED, std)
    else:
        state = weights.load(checkpoint)
        if not with_encoder:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        with torch.device("meta"):
            vae = VAE(config, with_encoder=with_encoder)
        load_strict(vae, _float32(state), checkpoint, assign=True)
    vae.remove_weight_norm()
    return freeze(vae)


def _vocoder_files(mode: str, checkpoint: str | os.PathLike) -> tuple[Path, BigVGANConfig | None]:
    """(generator file, config from config.json if given). A directory means the Hugging Face layout."""
    path = Path(checkpoint)
    if path.is_dir():
        config_file = path / "config.json"
        generator = path / "bigvgan_generator.pt"
        return generator, config_from_json(config_file) if config_file.is_file() else None
    if mode == "44k" and (path.parent / "config.json").is_file():
        return path, config_from_json(path.parent / "config.json")
    return path, None


def get_vocoder(mode: str, checkpoint: str | os.PathLike | None = None, size: str = "full") -> BigVGAN:
    """The frozen BigVGAN of ``mode``: log-mel (B, n_mels, N) -> waveform (B, 1, N·hop).

    16k: best_netG.pt ({'generator': state dict}). 44k: the nvidia/bigvgan_v2_44khz_128band_512x
    directory (config.json + bigvgan_generator.pt) or the .pt file alone (built-in config).
    ``checkpoint`` is found by ``weights.resolve``. Weight norm is folded into the conv weights
    at load.
    """
    checkpoint = _weights_file(mode, size, checkpoint, VOCODER_WEIGHTS)
    config = VOCODER_CONFIGS[(mode, size)]
    if checkpoint is None:
        vocoder = BigVGAN(config)
        std = {n: TINY_VOCODER_GAIN / math.sqrt(p[0].numel()) for n, p in vocoder.named_parameters() if p.ndim == 3}
        seeded_normal_(vocoder, TINY_SEED, std)
        with torch.no_grad():
            for name, param in vocoder.named_parameters():
                if name.endswith(".bias"):
                    param.zero_()
        return freeze(vocoder)
    generator_file, file_config = _vocoder_files(mode, checkpoint)
    if file_config is not None:
        if file_config.num_mels != config.num_mels:
            raise ValueError(
                f"{checkpoint}: config.json has num_mels={file_config.num_mels}, but the {mode} mel "
                f"converter gives {config.num_mels} bins; use a vocoder made for {mode}"
            )
        config = file_config
    payload = weights.load(generator_file)
    if not isinstance(payload, dict) or "generator" not in payload:
        raise ValueError(f"{generator_file}: expected a dict with a 'generator' state dict (BigVGAN release format)")
    state = fuse_weight_norm(payload["generator"])
    with torch.device("meta"):
        vocoder = BigVGAN(config)
    load_strict(vocoder, _float32(state), generator_file, assign=True)
    return freeze(vocoder)
