"""Throughput of the audio codec (mel + VAE encode; VAE decode + vocoder), fp32 vs bf16 autocast.

Uses recipe weights written in the released formats to a temporary folder, so nothing is
downloaded; the numbers are those of the real architectures. Run on a GPU machine:

    python bench/audio_codec.py --mode 44k --batch 16 [--out bench/results/audio_codec_44k.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mmgin.audio import AudioCodec
from mmgin.audio.alias_free import Activation1d
from mmgin.audio.bigvgan import BIGVGAN_16K, BIGVGAN_V2_44K, BigVGAN
from mmgin.testing.recipe import recipe_state_dict

SAMPLES = {"16k": 128000, "44k": 353280}  # 8 s clips as the training pipeline uses them


def write_recipe_codec(mode: str, vae: Path, vocoder: Path) -> None:
    """The mode's VAE and vocoder files in the released layouts, with recipe weights (the
    vocoder's anti-aliasing filters are fixed kernels, as in the released file)."""
    config = BIGVGAN_16K if mode == "16k" else BIGVGAN_V2_44K
    with torch.device("meta"):
        names = [k for k in BigVGAN(config).state_dict() if k.endswith(".filter")]
    filters = Activation1d(1).state_dict()
    fixed = {k: filters["downsample.lowpass.filter" if "lowpass" in k else "upsample.filter"] for k in names}
    vocoder.parent.mkdir(parents=True, exist_ok=True)
    torch.save(recipe_state_dict("vae_v1_16" if mode == "16k" else "vae_v1_44"), vae)
    manifest = "bigvgan_16k" if mode == "16k" else "bigvgan_v2_44k"
    torch.save({"generator": recipe_state_dict(manifest, fixed=fixed)}, vocoder)


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["16k", "44k"], default="44k")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=None, help="clip length (default: 8 s)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True

    with tempfile.TemporaryDirectory() as tmp:
        vae, vocoder = Path(tmp) / "vae.pth", Path(tmp) / "vocoder.pt"
        write_recipe_codec(args.mode, vae, vocoder)
        codec = AudioCodec(mode=args.mode, vae_checkpoint=vae, vocoder_checkpoint=vocoder).to(device)

    generator = torch.Generator().manual_seed(0)
    samples = args.samples or SAMPLES[args.mode]
    waveform = (torch.rand(args.batch, samples, generator=generator) * 2 - 1).to(device)
    results: dict[str, object] = {"mode": args.mode, "batch": args.batch, "samples_per_clip": samples,
                                  "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    outputs = {}
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def encode():
            with torch.inference_mode(), autocast:
                return codec.encode_waveform(waveform)

        mean, _ = encode()

        def decode():
            with torch.inference_mode(), autocast:
                return codec.decode_latent(mean)

        enc_s = _timed(encode, device, args.repeats)
        dec_s = _timed(decode, device, args.repeats)
        outputs[precision] = (mean.float(), decode().float())
        results[precision] = {
            "encode_s_per_batch": enc_s,
            "decode_s_per_batch": dec_s,
            "encode_clips_per_s": args.batch / enc_s,
            "decode_clips_per_s": args.batch / dec_s,
        }
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    (m32, w32), (m16, w16) = outputs["fp32"], outputs["bf16"]
    results["bf16_vs_fp32"] = {
        "latent_mean_max_abs_diff": float((m16 - m32).abs().max()),
        "latent_mean_rel_rms": float((m16 - m32).pow(2).mean().sqrt() / m32.pow(2).mean().sqrt()),
        "waveform_rel_rms": float((w16 - w32).pow(2).mean().sqrt() / w32.pow(2).mean().sqrt()),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
