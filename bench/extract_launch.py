"""Video extraction as users run it: `launch.py --gin_file=gin/extract_video_44k.gin` on one GPU.

Writes the recipe weights of the 44.1 kHz VAE, Synchformer and CLIP DFN5B ViT-H/14-384 under the
released file names into a weights folder that the run finds through $MMGIN_WEIGHTS_DIR (with an
empty_string.pth of the released shape), generates example videos (640x360, 25 fps, 10 s; a few
unique files linked under many names, as bench/extract.py does), then launches the program
`--launches` times, each into a new store, and reads each run's own summary line ("extraction of
<store> done in S s", from planning to the last row written; model loading and imports are not in
it) beside the process's wall time:

    python bench/extract_launch.py --videos 256 --out r.json                     # the default precision
    python bench/extract_launch.py --precision bf16 --compile --launches 2 --videos 384 --out r.json
    python bench/extract_launch.py --smoke            # CPU: tiny encoders, 4 small videos

A second launch shows what a user's next run costs once the compiled kernels are in the local
caches (--compile).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from extract import make_videos, recipe_checkpoints
from train_launch import publish
from mmgin import io

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"extraction of \S+ done in ([0-9.]+) s: (.*?)\. Failure report: \S+\. Time \(rank 0\): (.*)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="ExtractVideoFeatures.precision")
    parser.add_argument("--compile", action="store_true", help="ExtractVideoFeatures.compile")
    parser.add_argument("--batch_size", type=int, default=None, help="ExtractVideoFeatures.batch_size (default: gin's)")
    parser.add_argument("--workers", type=int, default=None, help="ExtractVideoFeatures.num_workers (default: gin's)")
    parser.add_argument("--frame_batch", type=int, default=None, help="get_clip.frame_batch (default: gin's)")
    parser.add_argument("--segment_batch", type=int, default=None, help="get_synchformer.segment_batch")
    parser.add_argument("--launches", type=int, default=1, help="runs, each into a new store")
    parser.add_argument("--root", type=Path, default=Path("/tmp/mmgin_extract_launch"),
                        help="weights, videos and stores (weights and videos are reused)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny encoders, 4 small videos")
    parser.add_argument("--out", type=Path, default=None, help="append the record to this JSON list")
    args = parser.parse_args(argv)
    args.width, args.height, args.seconds, args.unique = 640, 360, 10.0, 8
    if args.smoke:
        args.width, args.height, args.seconds, args.unique = 160, 120, 8.6, 2
        args.videos, args.batch_size, args.workers = 4, 2, 1
    return args


def write_weights(root: Path, smoke: bool) -> Path:
    """The weights folder: recipe files under the released names (none for the tiny encoders)."""
    weights = root / "weights"
    if not smoke:
        recipe_checkpoints(weights)
        empty_string = weights / "empty_string.pth"
        if not empty_string.is_file():  # the released file's shape; its values do not change the speed
            io.save_torch(torch.zeros(1, 77, 1024), empty_string)
    return weights


def extract_command(args: argparse.Namespace, videos: Path, table: Path, store: Path) -> list[str]:
    params: dict[str, Any] = {"VIDEO_DIR": str(videos), "VIDEO_TSV": str(table), "OUTPUT_DIR": str(store),
                              "ExtractVideoFeatures.precision": args.precision,
                              "ExtractVideoFeatures.compile": args.compile}
    optional = {"ExtractVideoFeatures.batch_size": args.batch_size, "ExtractVideoFeatures.num_workers": args.workers,
                "get_clip.frame_batch": args.frame_batch, "get_synchformer.segment_batch": args.segment_batch}
    params.update({k: v for k, v in optional.items() if v is not None})
    files = ["gin/extract_video_44k.gin"]
    if args.smoke:
        files += ["gin/vision/tiny.gin", "gin/audio/tiny.gin"]
        params["launch.device"] = "cpu"
    return ([sys.executable, str(REPO / "launch.py"), *(f"--gin_file={f}" for f in files)]
            + [f"--gin_param={k} = {v!r}" for k, v in params.items()])


def launch(args: argparse.Namespace, weights: Path, videos: Path, table: Path, store: Path) -> dict[str, Any]:
    """One run of the program; its log goes to <store>.log beside the store."""
    log = store.with_name(store.name + ".log")
    env = {**os.environ, "MMGIN_WEIGHTS_DIR": str(weights)}
    start = time.perf_counter()
    with open(log, "w") as stream:
        done = subprocess.run(extract_command(args, videos, table, store), cwd=REPO, env=env,
                              stdout=stream, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log.read_text()
    if done.returncode != 0:
        raise SystemExit(f"launch.py failed (exit {done.returncode}); its log, {log}:\n{text[-3000:]}")
    found = SUMMARY.search(text)
    if found is None:
        raise SystemExit(f"no extraction summary in {log}:\n{text[-3000:]}")
    seconds = float(found.group(1))
    return {"launch_wall_seconds": round(wall, 2), "videos_per_s_wall": args.videos / wall,
            "run_seconds": seconds, "videos_per_s": args.videos / seconds,
            "summary": found.group(2), "stage_seconds": found.group(3)}


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    weights = write_weights(args.root, args.smoke)
    videos, table = make_videos(args.root, args.unique, args.videos, args.width, args.height, args.seconds)
    runs = []
    for index in range(args.launches):
        store = args.root / f"store-{args.precision}{'-compiled' if args.compile else ''}-{int(time.time())}-{index}"
        runs.append(launch(args, weights, videos, table, store))
    record = {
        "precision": args.precision, "compile": args.compile, "videos": args.videos,
        "video": f"{args.width}x{args.height}, 25 fps, {args.seconds:g} s, {args.unique} unique files",
        "launches": runs, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "command": " ".join(["python3", "bench/extract_launch.py", *argv]),
    }
    return publish(record, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
