"""CLIP's image tower in candidate forms, side by side on one GPU, before any is promoted into
mmgin/vision/clip_forms.py: seconds per video (64 frames at 8 fps) in the extraction's two modes,
and each variant's feature difference from its mode's plain form.

  default                 float32 with TF32 matmuls, eager (the extraction's default mode)
  default+fused_gelu      ... QuickGELU as one kernel (a compiled pointwise function) instead of
                          eager's three passes over the 5120-wide hidden state
  default+sdpa_math / default+sdpa_efficient   ... SDPA's backend forced (float32 has no flash)
  fast                    bf16 autocast, image tower compiled (ExtractVideoFeatures.compile=True)
  fast+sdpa_flash         ... SDPA's flash backend forced (head dim 80; cuDNN is the default)

The model is the one get_clip builds (recipe weights of DFN5B ViT-H/14-384, the clip_forms
attention and patch embedding). With --profile, each variant's kernel categories are kept too.

    python bench/clip_variants.py --out r.json
    python bench/clip_variants.py --smoke            # CPU: the tiny CLIP, backends as on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from encoder_precision import full_clip_state
from train_launch import publish
from train_step import profile_calls, synchronize
from mmgin import precision as numerics
from mmgin.vision.clip import ClipEncoder, build_clip

FRAMES_PER_VIDEO = 64
BACKENDS = {"sdpa_math": SDPBackend.MATH, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa_flash": SDPBackend.FLASH_ATTENTION}


class FusedQuickGELU(nn.Module):
    """x * sigmoid(1.702 x) in one compiled pointwise kernel (dynamic shapes: one compilation,
    shared by every block that holds this module)."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.function = torch.compile(lambda x: x * torch.sigmoid(1.702 * x), dynamic=True, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


@contextlib.contextmanager
def fused_gelu(clip: ClipEncoder, backend: str) -> Iterator[None]:
    """Swaps one FusedQuickGELU into every image-tower block, and the original modules back after."""
    blocks = clip.model.visual.transformer.resblocks
    originals = [block.mlp.gelu for block in blocks]
    fused = FusedQuickGELU(backend)
    for block in blocks:
        block.mlp.gelu = fused
    try:
        yield
    finally:
        for block, gelu in zip(blocks, originals):
            block.mlp.gelu = gelu


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4, help="videos per timed call (64 frames each)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per variant, after one untimed")
    parser.add_argument("--default_frame_batch", type=int, default=64, help="get_clip.frame_batch (gin's)")
    parser.add_argument("--fast_frame_batch", type=int, default=256, help="the fast mode's frame batch")
    parser.add_argument("--profile", action="store_true", help="also each variant's kernel categories")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny CLIP, one video, one call")
    parser.add_argument("--out", type=Path, default=None, help="append the record to this JSON list")
    args = parser.parse_args(argv)
    if args.smoke:
        args.videos, args.calls, args.default_frame_batch, args.fast_frame_batch = 1, 1, 32, 64
    return args


def time_variant(encode: Callable[[], torch.Tensor], args: argparse.Namespace, device: torch.device
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
    features = encode().float()  # compiles, where anything is compiled
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.calls):
        encode()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.calls
    result: dict[str, Any] = {"seconds_per_video": seconds / args.videos, "videos_per_s": args.videos / seconds}
    if args.profile:
        report = profile_calls(encode, 1, device)
        result["kernel_ms_per_video"] = {k: v["ms_per_step"] / args.videos for k, v in report["categories"].items()}
    return features, result


def difference(features: torch.Tensor, plain: torch.Tensor) -> float:
    return float((features - plain).norm() / plain.norm())


def run_mode(clip: ClipEncoder, frames: torch.Tensor, mode: str, args: argparse.Namespace,
             device: torch.device) -> dict[str, dict[str, Any]]:
    """Every variant of one mode; the first is the mode's plain form, the others compare to it."""
    precision = "fp32" if mode == "default" else "bf16"
    compile_backend = "inductor" if device.type == "cuda" else "eager"
    variants: dict[str, Callable[[], contextlib.AbstractContextManager]] = {mode: contextlib.nullcontext}
    if mode == "default":
        variants["default+fused_gelu"] = lambda: fused_gelu(clip, compile_backend)
        backends = ("sdpa_math", "sdpa_efficient") if device.type == "cuda" else ("sdpa_math",)
    else:
        clip.compile_for_inference(compile_backend)
        backends = ("sdpa_flash",)
    variants.update({f"{mode}+{name}": (lambda b=BACKENDS[name]: sdpa_kernel(b)) for name in backends})
    clip.frame_batch = args.default_frame_batch if mode == "default" else args.fast_frame_batch
    results, plain = {}, None
    for name, context in variants.items():
        torch._dynamo.reset()  # a forced backend is chosen when the tower is traced
        with torch.inference_mode(), numerics.autocast(precision, device), numerics.matmul_tf32(True), context():
            features, results[name] = time_variant(lambda: clip.encode_frames(frames), args, device)
        plain = features if plain is None else plain
        results[name]["relative_difference_to_plain"] = difference(features, plain)
        print(name, results[name], flush=True)
    return results


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    clip = build_clip(None if args.smoke else full_clip_state(), "tiny" if args.smoke else "full", device=device)
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(args.videos, FRAMES_PER_VIDEO, 3, 384, 384, generator=generator).to(device)  # as decoded
    record: dict[str, Any] = {"videos_per_call": args.videos, "calls": args.calls,
                              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "command": " ".join(["python3", "bench/clip_variants.py", *argv])}
    for mode in ("default", "fast"):  # eager first: the fast mode compiles the tower in place
        record[mode] = run_mode(clip, frames, mode, args, device)
    return publish(record, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
