"""Multi-GPU check on one host: DDP training and video extraction on 1 GPU versus N GPUs.

    python bench/multi_gpu.py --gpus 2 --out bench/results/multi_gpu_2xH200.json

1. Training: small_16k from gin/small_16k.gin on synthetic 16 kHz stores, the same global batch
   (256) and per-GPU micro-batch (128) on 1 GPU (2 accumulation steps) and on N GPUs (256/N
   per GPU and accumulation as needed), for --steps iterations. The loss curves (train/loss from
   the TensorBoard event files) must agree within noise, and the per-GPU throughput on N GPUs
   must be at least 90% of the 1-GPU figure.
2. Extraction: gin/extract_video_44k.gin with full-size encoders on recipe weights over generated
   videos, on 1 GPU and on N GPUs; the two stores must be equal.

Everything runs through launch.py under torchrun, exactly as a user would run it. With
--gpus 1 the script runs both sides on one GPU (a dry run of the procedure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import extract as extract_bench  # noqa: E402  (bench/extract.py: recipe weights, videos)

from mmgin.data.store import FeatureStore  # noqa: E402
from mmgin.testing.example import write_synthetic_store  # noqa: E402

GLOBAL_BATCH = 256
MICRO_BATCH = 128


def torchrun(nproc: int, *args: str, log: Path) -> float:
    """Runs launch.py under torchrun; returns wall seconds; raises with the log tail on failure."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(REPO / "launch.py"), *args]
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "4"})
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{log.read_text()[-4000:]}")
    return time.perf_counter() - start


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def train(work: Path, nproc: int, steps: int, stores: dict[str, Path]) -> dict:
    out = work / f"train_{nproc}gpu"
    params = [
        f"VIDEO_STORES=['{stores['video']}']", f"AUDIO_STORES=['{stores['audio']}']",
        f"VAL_STORE='{stores['video']}'", f"OUTPUT_DIR='{out}'",
        f"Train.batch_size={GLOBAL_BATCH}", f"Train.micro_batch_size={min(MICRO_BATCH, GLOBAL_BATCH // nproc)}",
        f"Train.num_iterations={steps}", "LogConfig.every=20", f"ValidationConfig.every={10 * steps}",
        f"SamplingConfig.every={10 * steps}", f"CheckpointConfig.every={10 * steps}",
        f"EMAConfig.snapshot_every={10 * steps}", "Train.codec=None", "Train.num_workers=6",
        "EMAConfig.final_sigma_rel=None",
    ]
    wall = torchrun(nproc, "--gin_file=gin/small_16k.gin", *[f"--gin_param={p}" for p in params],
                    log=work / f"train_{nproc}gpu.log")
    loss = scalars(out, "train/loss")
    throughput = scalars(out, "train/samples_per_s")
    steady = [v for _, v in throughput[1:]] or [v for _, v in throughput]
    return {"gpus": nproc, "wall_s": wall, "loss": loss,
            "samples_per_s": float(np.median(steady)),
            "samples_per_s_per_gpu": float(np.median(steady)) / nproc}


def extract(work: Path, nproc: int, videos: Path, table: Path, weights: dict[str, Path]) -> Path:
    out = work / f"store_{nproc}gpu" / "vgg"
    params = [f"VIDEO_DIR='{videos}'", f"VIDEO_TSV='{table}'", f"OUTPUT_DIR='{out}'",
              f"AudioCodec.vae_checkpoint='{weights['vae']}'",
              f"get_clip.checkpoint='{weights['clip']}'", "get_clip.empty_string_path=None",
              f"get_synchformer.checkpoint='{weights['synchformer']}'"]
    torchrun(nproc, "--gin_file=gin/extract_video_44k.gin", *[f"--gin_param={p}" for p in params],
             log=work / f"extract_{nproc}gpu.log")
    return out


def compare_stores(a: Path, b: Path) -> dict:
    first, second = FeatureStore.open(a), FeatureStore.open(b)
    assert first.ids == second.ids, "the two stores hold different ids or order"
    rows = torch.arange(len(first))
    x, y = first.read(rows), second.read(rows)
    diffs = {key: float((x[key] - y[key]).abs().max()) for key in x}
    return {"rows": len(first), "max_abs_diff": diffs, "identical": all(v == 0 for v in diffs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmgin_multi_gpu"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    available = torch.cuda.device_count()
    if available < args.gpus:
        raise SystemExit(f"--gpus {args.gpus} but this machine has {available} CUDA devices")
    args.work.mkdir(parents=True, exist_ok=True)

    stores = {"video": args.work / "stores" / "video-16k", "audio": args.work / "stores" / "audio-16k"}
    write_synthetic_store(stores["video"], "video", args.rows, seed=1, overwrite=True)
    write_synthetic_store(stores["audio"], "audio", args.rows // 2, seed=2, overwrite=True)
    runs = [train(args.work, n, args.steps, stores) for n in sorted({1, args.gpus})]
    single, multi = runs[0], runs[-1]
    loss_1 = np.array([v for _, v in single["loss"]])
    loss_n = np.array([v for _, v in multi["loss"]])
    length = min(len(loss_1), len(loss_n))
    training = {
        "runs": runs,
        "loss_max_rel_diff": float(np.max(np.abs(loss_1[:length] - loss_n[:length]) / np.abs(loss_1[:length]))),
        "per_gpu_scaling": multi["samples_per_s_per_gpu"] / single["samples_per_s_per_gpu"],
    }

    weights = extract_bench.recipe_checkpoints(args.work)
    videos, table = extract_bench.make_videos(args.work / "media", unique=4, total=args.videos,
                                              width=640, height=360, seconds=10.0)
    store_1 = extract(args.work, 1, videos, table, weights)
    store_n = extract(args.work, args.gpus, videos, table, weights)
    result = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0),
        "gpus": args.gpus,
        "date": time.strftime("%Y-%m-%d"),
        "training": training,
        "extraction": compare_stores(store_1, store_n),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "gpus")} |
                     {"loss_max_rel_diff": training["loss_max_rel_diff"],
                      "per_gpu_scaling": training["per_gpu_scaling"],
                      "extraction_identical": result["extraction"]["identical"]}))


if __name__ == "__main__":
    main()
