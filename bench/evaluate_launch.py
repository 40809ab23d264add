"""Evaluate as users run it: `launch.py --gin_file=gin/evaluate_44k.gin` on one GPU, seconds per clip.

Writes recipe weights in the released files' layouts (the network, the 44.1 kHz VAE and the
BigVGAN-v2 vocoder) into a weights folder that the run finds through $MMGIN_WEIGHTS_DIR, and a
synthetic 44.1 kHz video store (in the page cache once written); runs Evaluate through launch.py
on the store (25 Euler steps, CFG 4.5, VAE decode + vocoder, flac files; no mp4s, as the store
has no source videos; no metrics, as there is no ground-truth cache) and reads the run's own
record (metrics.json: clips generated, seconds from the first batch to the last file written):

    python bench/evaluate_launch.py --network large_44k_v2 --batch 16 --items 256 --out r.json
    python bench/evaluate_launch.py --smoke            # CPU: tiny_44k and the tiny codec, 4 items

The paper reports 1.96 s per 8 s clip for L-44k (generation and decoding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from audio_codec import write_recipe_codec
from train_launch import publish
from mmgin import io
from mmgin.model import get_network
from mmgin.model.sequence import SequenceConfig
from mmgin.testing.example import write_synthetic_store
from mmgin.testing.recipe import recipe_state_dict
from mmgin.weights import BIGVGAN_V2_44K_DIR

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="large_44k_v2")
    parser.add_argument("--batch", type=int, default=16, help="Evaluate.batch_size")
    parser.add_argument("--items", type=int, default=256, help="clips to generate (rows of the store)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="Evaluate.precision")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmgin_evaluate_launch"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny_44k, tiny codec, 4 items, 2 steps")
    parser.add_argument("--out", type=Path, default=None, help="append the record to this JSON list")
    args = parser.parse_args(argv)
    if args.smoke:
        args.network, args.batch, args.items, args.precision = "tiny_44k", 2, 4, "fp32"
    return args


def network_weights(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The released file's tensors for a released size; a tiny network with set statistics and
    null text for the smoke run."""
    if not args.smoke:
        return recipe_state_dict(f"mmaudio_{args.network}")
    network = get_network(args.network)
    with torch.no_grad():
        network.latent_mean.zero_()
        network.latent_std.fill_(0.5)
        network.empty_string_feat.zero_()
    return network.state_dict()


def write_inputs(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(weights folder, network file, store), written once per workdir."""
    weights, store = args.workdir / f"weights-{args.network}", args.workdir / f"store-{args.items}"
    network = weights / f"mmaudio_{args.network}.pth"
    if not network.is_file():
        if not args.smoke:
            write_recipe_codec("44k", weights / "v1-44.pth", weights / BIGVGAN_V2_44K_DIR / "bigvgan_generator.pt")
        io.save_torch(network_weights(args), network)
    if not (store / "meta.json").is_file():
        seq = SequenceConfig.for_mode("44k")
        write_synthetic_store(store, "video", args.items, latent_shape=(seq.latent_seq_len, 40), seed=1)
    return weights, network, store


def evaluate_command(args: argparse.Namespace, network: Path, store: Path, out: Path) -> list[str]:
    params = {"NETWORK": args.network, "WEIGHTS": str(network), "STORE": str(store), "OUTPUT_DIR": str(out),
              "Evaluate.batch_size": args.batch, "Evaluate.precision": args.precision}
    files = ["gin/evaluate_44k.gin"]
    if args.smoke:
        files.append("gin/audio/tiny.gin")
        params.update({"launch.device": "cpu", "FlowMatching.num_steps": 2})
    return ([sys.executable, str(REPO / "launch.py"), *(f"--gin_file={f}" for f in files)]
            + [f"--gin_param={k} = {v!r}" for k, v in params.items()])


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    weights, network, store = write_inputs(args)
    out = args.workdir / f"run-{args.network}-b{args.batch}-{int(time.time())}"
    env = {**os.environ, "MMGIN_WEIGHTS_DIR": str(weights)}
    start = time.perf_counter()
    subprocess.run(evaluate_command(args, network, store, out), check=True, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    generated, seconds = metrics["generated"], metrics["seconds"]
    record: dict[str, Any] = {
        "network": args.network, "batch": args.batch, "precision": args.precision, "items": args.items,
        "generated": generated, "seconds": seconds, "seconds_per_clip": seconds / generated,
        "launch_wall_seconds": wall, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "command": " ".join(["python3", "bench/evaluate_launch.py", *argv]),
    }
    return publish(record, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
