"""Loader throughput and bytes read per sample, for each store layout.

Writes one synthetic video store per layout (reference float32 with a text feature per row;
bf16 with a text feature per row; bf16 with deduplicated text, the default), reads each file
once so the store sits in the page cache, then times DistributedBatchLoader over the store and
prints JSON: sustained samples/s (after warm-up batches) and bytes read per sample (the
distinct storage bytes one epoch touches, divided by its samples: each row once, each row of a
deduplicated text table once).

    python bench/loader.py                 # 20k samples, 8 workers, batch 64 (~35 GB of stores)
    python bench/loader.py --smoke         # 256 samples, 2 workers: a CPU check in seconds
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mmgin.data.datasets import ExtractedVideoDataset
from mmgin.data.loader import WORKER_KINDS, DistributedBatchLoader, rank_batches
from mmgin.data.store import StoreFormat
from mmgin.data.store_writer import Plan, PlannedRow, StoreWriter

LAYOUTS = {
    "reference_fp32": StoreFormat("fp32", False),
    "bf16": StoreFormat("bf16", False),
    "bf16_dedup_text (default)": StoreFormat("bf16", True),
}


def write_store(path: Path, rows: int, labels: int, latent: tuple[int, int], store_format: StoreFormat) -> None:
    """A store of random features, written in chunks (it may be far larger than RAM)."""
    captions = [f"label {i % labels}" for i in range(rows)]
    planned = [PlannedRow({"id": f"v{i:07d}", "label": c}, c, "synthetic") for i, c in enumerate(captions)]
    shapes = {"mean": latent, "std": latent, "clip_features": (64, 1024), "sync_features": (192, 768)}
    writer = StoreWriter(path, Plan(("id", "label"), planned, shapes, (77, 1024), store_format))
    writer.prepare()
    writer.open()
    generator = torch.Generator().manual_seed(0)
    distinct = writer.captions
    for start in range(0, len(distinct), 256):
        block = list(range(start, min(start + 256, len(distinct))))
        writer.write_text(block, torch.randn(len(block), 77, 1024, generator=generator))
    for start in range(0, rows, 256):
        block = list(range(start, min(start + 256, rows)))
        writer.write_rows(block, {k: torch.randn((len(block),) + s, generator=generator) for k, s in shapes.items()})
    writer.close()
    writer.finalize()


def warm_page_cache(path: Path) -> int:
    total = 0
    for file in sorted(path.iterdir()):
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


def measure(path: Path, batch_size: int, workers: int, worker_kind: str, warmup: int) -> dict:
    dataset = ExtractedVideoDataset(store=path)
    loader = DistributedBatchLoader(dataset, batch_size=batch_size, seed=0, rank=0, world_size=1,
                                    num_workers=workers, pin_memory=torch.cuda.is_available(),
                                    workers=worker_kind)
    batches = rank_batches(len(dataset), batch_size, 0, 0, 0, 1, True)
    epoch = [i for b in batches for i in b]
    # Distinct storage bytes an epoch touches (what must come from disk or the page cache):
    # every row once, plus each text-table row once however many rows share it.
    bytes_read = dataset.bytes_read(epoch)
    samples, start = 0, None
    for index, batch in enumerate(loader):
        if index == warmup:
            start = time.perf_counter()
        elif index > warmup:
            samples += len(batch["id"])
    seconds = time.perf_counter() - start
    return {
        "samples_per_s": samples / seconds,
        "bytes_read_per_sample": bytes_read / len(epoch),
        "store_bytes_on_disk": sum(f.stat().st_size for f in path.iterdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for a quick CPU check")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--labels", type=int, default=310, help="distinct captions (VGGSound: ~310)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--worker_kind", nargs="+", choices=WORKER_KINDS, default=list(WORKER_KINDS))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--mode", choices=("16k", "44k"), default="44k")
    parser.add_argument("--root", type=Path, default=None, help="where the stores go (default: a temp dir)")
    parser.add_argument("--layouts", nargs="+", default=[n.split(" ")[0] for n in LAYOUTS],
                        choices=[n.split(" ")[0] for n in LAYOUTS], help="which layouts to write and time")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.labels, args.workers, args.batch_size = 256, 16, 2, 16
    latent = (250, 20) if args.mode == "16k" else (345, 40)
    warmup = 2 if args.smoke else 10
    results = {"rows": args.rows, "workers": args.workers, "batch_size": args.batch_size, "mode": args.mode,
               "pin_memory": torch.cuda.is_available(), "layouts": {}}
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        for name, store_format in LAYOUTS.items():
            if name.split(" ")[0] not in args.layouts:
                continue
            path = Path(tmp) / name.split(" ")[0]
            write_store(path, args.rows, args.labels, latent, store_format)
            warm_page_cache(path)
            results["layouts"][name] = {
                kind: measure(path, args.batch_size, args.workers, kind, warmup) for kind in args.worker_kind
            }
            for file in path.iterdir():  # free the disk space before the next layout
                file.unlink()
    if "reference_fp32" in results["layouts"]:
        reference = next(iter(results["layouts"]["reference_fp32"].values()))["bytes_read_per_sample"]
        for by_kind in results["layouts"].values():
            for entry in by_kind.values():
                entry["bytes_vs_reference"] = entry["bytes_read_per_sample"] / reference
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
