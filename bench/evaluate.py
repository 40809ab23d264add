"""Evaluation throughput: generation (Euler + CFG) and decoding per batch, and FD cost.

Times `generate_latents` (25 Euler steps, CFG 4.5, bf16 autocast) and
`AudioCodec.decode_latent` for a network variant at a batch size, after one warm-up batch,
and the Fréchet distance on 2048-d embeddings both ways (scipy sqrtm as av-benchmark, and the
exact low-rank SVD mmgin uses when a set has fewer rows than dimensions). Prints JSON.
Network weights are random (speed does not depend on them); the codec is tiny unless
--full_codec (which needs ext_weights/).

    python bench/evaluate.py --network large_44k_v2 --batch_size 16         # on a GPU
    python bench/evaluate.py --smoke                                       # CPU check in seconds
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mmgin.audio import AudioCodec
from mmgin.eval import metrics
from mmgin import precision
from mmgin.model import FlowMatching, get_network
from mmgin.model.sampling import Conditions, generate_latents
from mmgin.model.network import VARIANTS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(args: argparse.Namespace, device: torch.device) -> dict:
    variant = VARIANTS[args.network]
    network = get_network(args.network, latent_mean=torch.zeros(variant.latent_dim),
                          latent_std=torch.ones(variant.latent_dim)).to(device).eval()
    codec = AudioCodec(mode=variant.mode, size="full" if args.full_codec else "tiny",
                       with_encoder=False).to(device)
    flow = FlowMatching(num_steps=args.num_steps)
    bs = args.batch_size
    conditions = Conditions(torch.randn(bs, network.clip_seq_len, 1024), torch.randn(bs, network.sync_seq_len, 768),
                            torch.randn(bs, 77, 1024), torch.ones(bs, dtype=torch.bool),
                            torch.ones(bs, dtype=torch.bool))
    generator = torch.Generator(device=device).manual_seed(0)
    timings = {"generate_s": [], "decode_s": []}
    for repeat in range(args.repeats + 1):
        _sync(device)
        start = time.perf_counter()
        latents = generate_latents(network, flow, conditions, generator)
        _sync(device)
        middle = time.perf_counter()
        with torch.inference_mode(), precision.autocast("bf16", device):
            codec.decode_latent(latents)
        _sync(device)
        if repeat > 0:  # the first batch warms up kernels and allocators
            timings["generate_s"].append(middle - start)
            timings["decode_s"].append(time.perf_counter() - middle)
    generate, decode = (float(np.median(timings[k])) for k in ("generate_s", "decode_s"))
    return {"network": args.network, "batch_size": bs, "num_steps": args.num_steps, "device": str(device),
            "generate_s_per_batch": generate, "decode_s_per_batch": decode,
            "samples_per_s": bs / (generate + decode),
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def time_fd(rows: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((rows, dim)), rng.standard_normal((rows + 1, dim)) + 0.1
    out = {"rows": rows, "dim": dim}
    for method in ("low_rank", "sqrtm"):
        start = time.perf_counter()
        out[f"{method}_fd"] = metrics.frechet_distance(a, b, method=method)
        out[f"{method}_s"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", default="large_44k_v2", choices=sorted(VARIANTS))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full_codec", action="store_true")
    parser.add_argument("--fd_rows", type=int, default=256)
    parser.add_argument("--fd_dim", type=int, default=2048)
    parser.add_argument("--smoke", action="store_true", help="tiny network, 2 steps, batch 2, small FD")
    args = parser.parse_args()
    if args.smoke:
        args.network, args.batch_size, args.num_steps, args.repeats = "tiny_16k", 2, 2, 1
        args.fd_rows, args.fd_dim = 32, 128
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(json.dumps({"generation": time_generation(args, device),
                      "frechet_distance": time_fd(args.fd_rows, args.fd_dim)}, indent=2))


if __name__ == "__main__":
    main()
