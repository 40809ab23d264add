"""The Train program as users run it: `torchrun ... launch.py` on one GPU, window by window.

Writes synthetic feature stores (in the page cache once written), runs the runnable config of a
network size through torchrun with EMA, validation loss, checkpoints and logging on, reads every
logged window back from TensorBoard, and runs bench/train_step.py at the same batch in the same
call, so each window can be compared with the bench step on the same card:

    python bench/train_launch.py --variant small_16k --batch 256 --out bench/results/train_launch.json
    python bench/train_launch.py --variant large_44k --batch 64 --iterations 120
    python bench/train_launch.py --smoke            # CPU: tiny_16k, a few steps, no bench step

A window is the `log_every` steps before a log point; it is marked with what ran at its end
(validation, checkpoint, EMA snapshot), since those are the windows that ran slow.
`train/samples_per_s` counts training time only (Train excludes validation, sampling and
checkpointing from it).
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

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
LATENTS = {"16k": (250, 20), "44k": (345, 40)}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small_16k")
    parser.add_argument("--batch", type=int, default=256, help="global batch (one GPU)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--log_every", type=int, default=20)
    parser.add_argument("--val_every", type=int, default=60)
    parser.add_argument("--checkpoint_every", type=int, default=60)
    parser.add_argument("--ema_snapshot_every", type=int, default=60)
    parser.add_argument("--video_rows", type=int, default=4096)
    parser.add_argument("--audio_rows", type=int, default=2048)
    parser.add_argument("--val_rows", type=int, default=512)
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmgin_train_launch"))
    parser.add_argument("--no-bench-step", dest="bench_step", action="store_false")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny_16k, a few steps")
    parser.add_argument("--out", type=Path, default=None, help="append the record to this JSON list")
    args = parser.parse_args(argv)
    if args.smoke:
        args.variant, args.batch, args.iterations = "tiny_16k", 2, 6
        args.log_every = args.val_every = args.checkpoint_every = args.ema_snapshot_every = 2
        args.video_rows, args.audio_rows, args.val_rows, args.num_workers = 8, 4, 2, 0
        args.bench_step = False
    return args


def make_stores(args: argparse.Namespace) -> dict[str, Path]:
    from mmgin.testing.example import write_synthetic_store

    mode = "44k" if args.variant.endswith(("44k", "44k_v2")) else "16k"
    latent = LATENTS[mode]
    stores = {"video": args.workdir / f"video-{mode}", "audio": args.workdir / f"audio-{mode}",
              "val": args.workdir / f"val-{mode}"}
    rows = {"video": args.video_rows, "audio": args.audio_rows, "val": args.val_rows}
    for seed, (role, path) in enumerate(stores.items()):
        if not (path / "meta.json").is_file():
            kind = "audio" if role == "audio" else "video"
            write_synthetic_store(path, kind, rows[role], latent_shape=latent, seed=seed + 1)
    return stores


def config_file(variant: str) -> str:
    return "gin/small_16k.gin" if variant == "tiny_16k" else f"gin/{variant}.gin"


def train_command(args: argparse.Namespace, stores: dict[str, Path], out: Path) -> list[str]:
    params = {
        "VIDEO_STORES": [str(stores["video"])], "AUDIO_STORES": [str(stores["audio"])],
        "VAL_STORE": str(stores["val"]), "OUTPUT_DIR": str(out), "Train.codec": None,
        "Train.batch_size": args.batch, "Train.num_iterations": args.iterations,
        "LogConfig.every": args.log_every, "ValidationConfig.every": args.val_every,
        "CheckpointConfig.every": args.checkpoint_every, "EMAConfig.snapshot_every": args.ema_snapshot_every,
        "Train.num_workers": args.num_workers, "EMAConfig.final_sigma_rel": None,
    }
    files = [config_file(args.variant)]
    if args.smoke:
        files.append("gin/test/tiny_train.gin")
        params.update({"Train.batch_size": 2, "launch.device": "cpu", "Train.codec": None})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               str(REPO / "launch.py"), *(f"--gin_file={f}" for f in files)]
    return command + [f"--gin_param={k} = {v!r}" for k, v in params.items()]


def windows(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rows = []
    for event in events.Scalars("train/samples_per_s"):
        it = event.step
        ends_at = [name for name, every in (("validation", args.val_every), ("checkpoint", args.checkpoint_every),
                                            ("ema_snapshot", args.ema_snapshot_every)) if it % every == 0]
        rows.append({"iteration": it, "samples_per_s": event.value, "ends_at": ends_at})
    return rows


def bench_step(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.bench_step:
        return None
    out = args.workdir / "bench_step.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"), "--variant", args.variant,
                    "--batch", str(args.batch), "--steps", "15", "--warmup", "3", "--out", str(out)],
                   check=True, cwd=REPO)
    return json.loads(out.read_text())[0]


def publish(record: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Prints the record and, with ``out``, appends it to that JSON list (a bench's results file)."""
    print(json.dumps(record, indent=1), flush=True)
    if out is not None:
        previous = json.loads(out.read_text()) if out.is_file() else []
        out.write_text(json.dumps(previous + [record], indent=1) + "\n")
    return record


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    stores = make_stores(args)
    out = args.workdir / f"run-{args.variant}-b{args.batch}-{int(time.time())}"
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "8")}
    subprocess.run(train_command(args, stores, out), check=True, cwd=REPO, env=env)
    record: dict[str, Any] = {"variant": args.variant, "batch": args.batch, "iterations": args.iterations,
                              "run_seconds": time.perf_counter() - start, "windows": windows(args, out)}
    step = bench_step(args)
    if step is not None:
        record["bench_step_samples_per_s"] = step["samples_per_s"]
        record["device"] = step["device"]
        for row in record["windows"]:
            row["of_bench_step"] = row["samples_per_s"] / step["samples_per_s"]
    return publish(record, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
