"""Video extraction throughput: the 44.1 kHz pipeline with full-size encoders on recipe weights.

Writes the deterministic recipe weights (mmgin.testing.recipe) of the 44.1 kHz VAE, Synchformer
and CLIP DFN5B ViT-H/14-384 to a temp dir, generates example videos (640x360, 25 fps, 10 s;
a few unique ones, linked under many names), then prints JSON with:

  decode_only_videos_per_s   DataLoader workers decoding audio + both frame streams, no encoders
  videos_per_s               ExtractVideoFeatures end to end (decode, encoders, store writes)
  stage_seconds              where the main process spent its time (per encoder, waiting, writes)

    python bench/extract.py                      # GPU: 128 videos, batch 16, 12 workers, fp32
    python bench/extract.py --bf16               # the same under bfloat16 autocast
    python bench/extract.py --smoke              # CPU check: tiny encoders, 4 small videos
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmgin import dist
from mmgin.audio.codec import AudioCodec
from mmgin.data import tsv as tsv_io
from mmgin.data.extraction import BlockDataset, global_blocks
from mmgin.model.sequence import SYNC_FPS, SequenceConfig
from mmgin.programs.extract_video import ExtractVideoFeatures, VideoRowDecoder, plan_video_rows
from mmgin.programs.make_example_data import MakeExampleData
from mmgin.testing.recipe import recipe_state_dict
from mmgin.vision.clip import get_clip
from mmgin.vision.synchformer import get_synchformer


def make_videos(root: Path, unique: int, total: int, width: int, height: int, seconds: float) -> tuple[Path, Path]:
    MakeExampleData(root / "generated", num_videos=unique, num_audios=0, video_seconds=seconds,
                    width=width, height=height).run()
    videos = root / "videos"
    videos.mkdir()
    sources = sorted((root / "generated" / "videos").iterdir())
    rows = []
    for i in range(total):
        name = f"clip_{i:05d}"
        (videos / f"{name}.mp4").symlink_to(sources[i % len(sources)])
        rows.append({"id": name, "label": f"label {i % 7}"})
    tsv_io.write_table(root / "videos.tsv", ("id", "label"), rows)
    return videos, root / "videos.tsv"


def recipe_checkpoints(root: Path) -> dict[str, Path]:
    paths = {"vae": root / "v1-44.pth", "synchformer": root / "synchformer_state_dict.pth",
             "clip": root / "open_clip_pytorch_model.bin"}
    for name, manifest in (("vae", "vae_v1_44"), ("synchformer", "synchformer"), ("clip", "clip_dfn5b_vit_h_14_384")):
        torch.save(recipe_state_dict(manifest), paths[name])
    return paths


def decode_only(video_dir: Path, video_tsv: Path, batch_size: int, workers: int) -> float:
    seq = SequenceConfig.for_mode("44k")
    rows, _, _ = plan_video_rows(video_dir, video_tsv)
    decoder = VideoRowDecoder(tuple(r.source for r in rows), seq.sampling_rate, seq.num_audio_samples,
                              True, seq.clip_seq_len, int(seq.duration * SYNC_FPS))
    loader = DataLoader(BlockDataset(global_blocks(len(rows), batch_size), decoder), batch_size=None,
                        num_workers=workers, prefetch_factor=2 if workers else None)
    start, count = time.perf_counter(), 0
    for block in loader:
        count += len(block["rows"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny encoders and 4 small videos on the CPU")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the encoders")
    parser.add_argument("--videos", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    size, width, height, seconds, unique = "full", 640, 360, 10.0, 8
    if args.smoke:
        size, width, height, seconds, unique = "tiny", 160, 120, 8.6, 2
        args.videos, args.batch_size, args.workers = 4, 2, 1
    info = dist.init()
    results = {"device": str(info.device), "size": size, "bf16": args.bf16, "videos": args.videos,
               "batch_size": args.batch_size, "workers": args.workers, "resolution": f"{width}x{height}"}
    if info.device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(info.device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        root = Path(tmp)
        video_dir, video_tsv = make_videos(root, unique, args.videos, width, height, seconds)
        results["decode_only_videos_per_s"] = decode_only(video_dir, video_tsv, args.batch_size, args.workers)
        if size == "full":
            weights = recipe_checkpoints(root)
            codec = AudioCodec("44k", vae_checkpoint=weights["vae"], with_vocoder=False)
            clip = get_clip(checkpoint=weights["clip"])
            synchformer = get_synchformer(checkpoint=weights["synchformer"])
        else:
            codec = AudioCodec("44k", size="tiny", with_vocoder=False)
            clip, synchformer = get_clip(size="tiny"), get_synchformer(size="tiny")
        program = ExtractVideoFeatures(
            output_dir=root / "stores" / "video-44k", video_dir=video_dir, video_tsv=video_tsv, codec=codec,
            clip=clip, synchformer=synchformer, batch_size=args.batch_size, num_workers=args.workers, bf16=args.bf16,
        )
        start = time.perf_counter()
        program.run()
        elapsed = time.perf_counter() - start
        results["videos_per_s"] = args.videos / elapsed
        results["stage_seconds"] = {k: round(v, 3) for k, v in sorted(program.times.seconds.items())}
        results["total_seconds"] = round(elapsed, 3)
    dist.shutdown()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
