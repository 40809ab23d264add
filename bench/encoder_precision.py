"""bf16-autocast error of the extraction encoders against their float32 features.

Builds CLIP DFN5B ViT-H/14-384, the Synchformer visual branch and the 44.1 kHz VAE encoder with
the deterministic recipe weights, runs the fixture inputs (tests/fixtures: CLIP frames and
captions, the first 24 Synchformer frames regenerated from their seed, the VAE waveform) in
float32, under bfloat16 autocast and (on CUDA) with TF32 matmuls, and prints JSON per feature:
the relative L2 error, the largest absolute error, and whether the result would pass the
fixture's tolerance against float32. Timings include the first call's warm-up.
That tolerance is the bar for extracted features; a feature that misses it stays float32.

    python bench/encoder_precision.py --device cuda --out bench/results/encoder_precision_h100.json
    python bench/encoder_precision.py --device cpu      # CPU autocast (oneDNN bf16 GEMMs)
    python bench/encoder_precision.py --device cpu --compile   # also compiled bf16 (inductor's C++ kernels)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from mmgin import io
from mmgin import precision as numerics
from mmgin.audio.codec import AudioCodec
from mmgin.testing.recipe import read_manifest, recipe_state_dict, recipe_tensor
from mmgin.vision.clip import build_clip
from mmgin.vision.synchformer import build_synchformer

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def error_stats(low: torch.Tensor, reference: torch.Tensor, tolerance: dict[str, float]) -> dict[str, Any]:
    error = (low - reference).abs()
    allowed = tolerance["atol"] + tolerance["rtol"] * reference.abs()
    return {
        "relative_l2_error": float((low - reference).norm() / reference.norm()),
        "max_abs_error": float(error.max()),
        "fraction_outside_tolerance": float((error > allowed).float().mean()),
        "passes_fixture_tolerance": bool((error <= allowed).all()),
    }


def timed(run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = run().float()
    return out, round(time.perf_counter() - start, 3)


def compare(name: str, run: Callable[[], torch.Tensor], device: torch.device,
            tolerance: dict[str, float], compile_encoder: Callable[[], None] | None = None) -> dict[str, Any]:
    """float32 features, then bf16 autocast (and TF32 matmuls on CUDA) against them; with
    ``compile_encoder``, also bf16 autocast after compiling (the fast extraction mode)."""
    result: dict[str, Any] = {"feature": name, "fixture_tolerance": tolerance}
    with torch.inference_mode():
        reference, result["fp32_seconds"] = timed(run)
        with numerics.autocast("bf16", device):
            low, result["bf16_seconds"] = timed(run)
        result["bf16"] = error_stats(low, reference, tolerance)
        if device.type == "cuda":
            with numerics.matmul_tf32(True):
                tf32, result["tf32_seconds"] = timed(run)
            result["tf32"] = error_stats(tf32, reference, tolerance)
        if compile_encoder is not None:
            compile_encoder()
            with numerics.autocast("bf16", device):
                compiled, result["bf16_compiled_seconds"] = timed(run)
            result["bf16_compiled"] = error_stats(compiled, reference, tolerance)
    result["max_abs_value"] = float(reference.abs().max())
    print(json.dumps(result), flush=True)
    return result


def full_clip_state() -> dict[str, torch.Tensor]:
    manifest = read_manifest("clip_dfn5b_vit_h_14_384")
    with ThreadPoolExecutor(max_workers=4) as pool:  # per-key generators: order-independent
        values = pool.map(lambda entry: recipe_tensor(entry.key, entry.shape), manifest)
        return {entry.key: value for entry, value in zip(manifest, values)}


def main(argv: list[str]) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--compile", action="store_true",
                        help="also bf16 with CLIP's image tower and Synchformer compiled (ExtractVideoFeatures.compile)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # float32 means float32: no TF32 in the reference features
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    results = []

    clip_fixture = torch.load(FIXTURES / "clip.pt", weights_only=True)
    clip = build_clip(full_clip_state(), "full", frame_batch=2, device=device)
    frames = clip_fixture["inputs"]["clip_video"].to(device)
    tolerances = clip_fixture["meta"]["tolerances"]
    results.append(compare("clip_image", lambda: clip.encode_frames(frames), device,
                           tolerances["image_features"], clip.compile_for_inference if args.compile else None))
    captions = clip_fixture["meta"]["captions"]
    results.append(compare("clip_text", lambda: clip.encode_text(captions), device,
                           tolerances["text_features"]))
    del clip

    sync_fixture = torch.load(FIXTURES / "synchformer.pt", weights_only=True)
    synchformer = build_synchformer(recipe_state_dict("synchformer"), "full", segment_batch=2,
                                    device=device)
    generator = torch.Generator().manual_seed(1007)  # the fixture's input procedure
    video = (torch.rand(1, 200, 3, 224, 224, generator=generator) * 2 - 1)[:, :24].to(device)
    results.append(compare("synchformer", lambda: synchformer(video), device,
                           sync_fixture["meta"]["tolerances"]["features"],
                           synchformer.compile_for_inference if args.compile else None))
    del synchformer

    vae_fixture = torch.load(FIXTURES / "vae_44k.pt", weights_only=True)
    with tempfile.TemporaryDirectory() as tmp:  # the codec loads released-format files
        path = Path(tmp) / "v1-44.pth"
        torch.save(recipe_state_dict("vae_v1_44"), path)
        codec = AudioCodec("44k", vae_checkpoint=path, with_vocoder=False).to(device).eval()
    waveform = vae_fixture["inputs"]["waveform"].to(device)
    tolerances = vae_fixture["meta"]["tolerances"]
    results.append(compare("vae_mean", lambda: codec.encode_waveform(waveform)[0], device,
                           tolerances["mean"]))
    results.append(compare("vae_std", lambda: codec.encode_waveform(waveform)[1], device,
                           tolerances["std"]))
    for r in results:
        r["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.out is not None:
        io.write_text(args.out, json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
