"""Video extraction throughput: the 44.1 kHz pipeline with full-size encoders on recipe weights.

Writes the deterministic recipe weights (mmgin.testing.recipe) of the 44.1 kHz VAE, Synchformer
and CLIP DFN5B ViT-H/14-384 to a scratch dir, generates example videos (640x360, 25 fps, 10 s;
a few unique ones, linked under many names), then prints (and with --out writes) JSON with:

  decode_only      DataLoader workers decoding audio + both frame streams, no encoders
  encoders_only    the encoders alone on batches already on the device, per precision
                   ('fp32': float32 without TF32, as the reference; 'bf16': autocast), eager
  warmup_run       a first ExtractVideoFeatures run (CUDA start-up, compilation), its seconds
  timed_run        a second run over --videos videos (the program's default precision: float32
                   with TF32 on CUDA; --no-tf32 strict float32): end-to-end videos/s, where the main
                   process spent its time (per encoder, waiting for decoded blocks, writes)
  encoders_only_after_warmup   the encoders as the timed run configured them (e.g. compiled)
  profile          with --profile DIR: each encoder alone, as the timed run configured it, under
                   torch.profiler (kernel tables DIR/profile_<encoder>.txt, per batch of videos)

    python bench/extract.py --precision bf16 --compile --out r.json   # GPU: 512 videos, batch 16, 12 workers
    python bench/extract.py --smoke                                   # CPU check: tiny encoders, 4 small videos
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmgin import dist, io
from mmgin.audio.codec import AudioCodec
from mmgin.data import tsv as tsv_io
from mmgin.data.extraction import row_loader
from mmgin.model.sequence import SYNC_FPS, SequenceConfig
from mmgin import precision as numerics
from mmgin.media.video import clip_frames_to_float, sync_frames_to_float
from mmgin.programs.extract_video import ExtractVideoFeatures, VideoRowDecoder, plan_video_rows
from mmgin.programs.extraction_base import to_device
from mmgin.programs.make_example_data import MakeExampleData
from mmgin.testing.recipe import recipe_state_dict
from mmgin.vision.clip import get_clip
from mmgin.vision.synchformer import get_synchformer
from train_step import profile_calls, write_profile

MODE = "44k"


def make_videos(root: Path, unique: int, total: int, width: int, height: int, seconds: float) -> tuple[Path, Path]:
    generated = root / "generated"
    if not generated.exists():
        MakeExampleData(generated, num_videos=unique, num_audios=0, video_seconds=seconds,
                        width=width, height=height).run()
    videos, table = root / f"videos_{total}", root / f"videos_{total}.tsv"
    if table.exists():
        return videos, table
    videos.mkdir()
    sources = sorted((generated / "videos").iterdir())
    rows = []
    for i in range(total):
        name = f"clip_{i:05d}"
        (videos / f"{name}.mp4").symlink_to(sources[i % len(sources)])
        rows.append({"id": name, "label": f"label {i % 7}"})
    tsv_io.write_table(table, ("id", "label"), rows)
    return videos, table


def recipe_checkpoints(root: Path) -> dict[str, Path]:
    """The recipe weights as checkpoint files (kept in ``root``: later runs reuse them)."""
    paths = {"vae": root / "v1-44.pth", "synchformer": root / "synchformer_state_dict.pth",
             "clip": root / "open_clip_pytorch_model.bin"}
    for name, manifest in (("vae", "vae_v1_44"), ("synchformer", "synchformer"), ("clip", "clip_dfn5b_vit_h_14_384")):
        if not paths[name].exists():
            io.save_torch(recipe_state_dict(manifest), paths[name])
    return paths


def video_decoder(video_dir: Path, video_tsv: Path) -> tuple[VideoRowDecoder, int]:
    seq = SequenceConfig.for_mode(MODE)
    rows, _, _ = plan_video_rows(video_dir, video_tsv)
    decoder = VideoRowDecoder(tuple(r.source for r in rows), seq.sampling_rate, seq.num_audio_samples,
                              True, seq.clip_seq_len, int(seq.duration * SYNC_FPS))
    return decoder, len(rows)


def decode_only(video_dir: Path, video_tsv: Path, batch_size: int, workers: int) -> dict[str, Any]:
    decoder, count = video_decoder(video_dir, video_tsv)
    start, decoded = time.perf_counter(), 0
    for result in row_loader(range(count), decoder, workers, batch_size, pin_memory=False):
        decoded += result["failure"] is None
    seconds = time.perf_counter() - start
    return {"videos": decoded, "seconds": round(seconds, 3), "videos_per_s": decoded / seconds}


def synthetic_batch(batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A decoded block as the workers deliver it (uint8 frames), already on the device."""
    seq = SequenceConfig.for_mode(MODE)
    g = torch.Generator(device="cpu").manual_seed(0)

    def frames(count: int, size: int) -> torch.Tensor:
        return torch.randint(0, 256, (batch_size, count, 3, size, size), dtype=torch.uint8, generator=g)

    batch = {
        "waveform": torch.randn(batch_size, seq.num_audio_samples, generator=g) * 0.1,
        "clip_frames": frames(seq.clip_seq_len, 384),
        "sync_frames": frames(int(seq.duration * SYNC_FPS), 224),
    }
    return {k: v.to(device) for k, v in batch.items()}


def encoders_only(program: ExtractVideoFeatures, batch: dict[str, torch.Tensor], warmup: int, timed: int) -> dict[str, Any]:
    """Videos/s of ``program.encode_batch`` alone and seconds per video of each encoder."""
    program.compile_encoders()
    with torch.inference_mode(), numerics.matmul_tf32(program.tf32):  # as the program's run() sets it
        for _ in range(warmup):
            program.encode_batch(batch)
        program.times.seconds.clear()
        start = time.perf_counter()
        for _ in range(timed):
            program.encode_batch(batch)
        seconds = time.perf_counter() - start
    videos = timed * batch["waveform"].shape[0]
    return {"precision": program.precision, "compile": program.compile, "videos": videos, "videos_per_s": videos / seconds,
            "seconds_per_video": {k: round(v / videos, 4) for k, v in sorted(program.times.seconds.items())}}


def profile_encoders(program: ExtractVideoFeatures, batch: dict[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    """Kernel time of CLIP and Synchformer, each alone on one batch, under the program's precision
    (and compilation, if the program compiled them): where each spends its time outside GEMMs."""
    device = batch["waveform"].device
    encoders = {"clip": lambda: program.clip.encode_frames(clip_frames_to_float(batch["clip_frames"])),
                "synchformer": lambda: program.synchformer(sync_frames_to_float(batch["sync_frames"]))}
    reports = {}
    with torch.inference_mode(), numerics.autocast(program.precision, device), numerics.matmul_tf32(program.tf32):
        for name, encode in encoders.items():
            encode()  # compiled already; this only makes sure
            report = profile_calls(encode, 2, device)
            write_profile(folder / f"profile_{name}.txt", f"{name}, batch of {batch['waveform'].shape[0]} videos, "
                          f"precision {program.precision}, compile {program.compile}", report)
            reports[name] = {k: report[k] for k in ("wall_ms_per_step", "kernel_ms_per_step", "categories")}
    return reports


def extraction_run(
    root: Path, runs: Path, name: str, encoders: dict, args: argparse.Namespace, videos: int
) -> tuple[ExtractVideoFeatures, dict]:
    video_dir, video_tsv = make_videos(root, args.unique, videos, args.width, args.height, args.seconds)
    program = ExtractVideoFeatures(
        output_dir=runs / name, video_dir=video_dir, video_tsv=video_tsv, **encoders,
        batch_size=args.batch_size, num_workers=args.workers, precision=args.precision, compile=args.compile,
        tf32=args.tf32,
    )
    start = time.perf_counter()
    program.run()
    seconds = time.perf_counter() - start
    stages = {k: round(v, 3) for k, v in sorted(program.times.seconds.items())}
    return program, {"videos": videos, "seconds": round(seconds, 3), "videos_per_s": videos / seconds,
                     "stage_seconds": stages}


def build_encoders(root: Path, args: argparse.Namespace, device: torch.device) -> dict:
    chunks = {"clip": {"frame_batch": args.frame_batch}, "synchformer": {"segment_batch": args.segment_batch}}
    if args.size == "full":
        weights = recipe_checkpoints(root / "weights")  # the folder bench/extract_launch.py uses
        encoders = {"codec": AudioCodec(MODE, vae_checkpoint=weights["vae"], with_vocoder=False),
                    "clip": get_clip(checkpoint=weights["clip"], **chunks["clip"]),
                    "synchformer": get_synchformer(checkpoint=weights["synchformer"], **chunks["synchformer"])}
    else:
        encoders = {"codec": AudioCodec(MODE, size="tiny", with_vocoder=False),
                    "clip": get_clip(size="tiny", **chunks["clip"]),
                    "synchformer": get_synchformer(size="tiny", **chunks["synchformer"])}
    return {k: to_device(v, device) for k, v in encoders.items()}


def write(results: dict, path: Path | None) -> str:
    text = json.dumps(results, indent=2)
    if path is not None:
        io.write_text(path, text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny encoders and 4 small videos on the CPU")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="the runs' ExtractVideoFeatures.precision (bf16: bfloat16 autocast)")
    parser.add_argument("--compile", action="store_true", help="compiled CLIP image tower and Synchformer")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false",
                        help="strict float32 extraction runs on CUDA (default: the programs' TF32)")
    parser.add_argument("--videos", type=int, default=512, help="videos of the timed run")
    parser.add_argument("--warmup_videos", type=int, default=32, help="videos of the untimed first run")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--encoder_modes", nargs="*", default=["fp32", "bf16"],
                        choices=["fp32", "bf16", "bf16-compile"],
                        help="encoder-only measurements before the runs (compiling is for good)")
    parser.add_argument("--encoders_only", action="store_true", help="skip the extraction runs")
    parser.add_argument("--frame_batch", type=int, default=64, help="CLIP frames per forward")
    parser.add_argument("--segment_batch", type=int, default=24, help="Synchformer segments per forward")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder for weights and videos, kept for later runs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every stage)")
    parser.add_argument("--profile", type=Path, default=None, help="folder for the encoders' kernel tables")
    args = parser.parse_args()
    args.size, args.width, args.height, args.seconds, args.unique = "full", 640, 360, 10.0, 8
    if args.smoke:
        args.size, args.width, args.height, args.seconds, args.unique = "tiny", 160, 120, 8.6, 2
        args.videos, args.warmup_videos, args.batch_size, args.workers = 4, 2, 2, 1
    info = dist.init()
    device = info.device
    results: dict[str, Any] = {
        "device": str(device), "size": args.size, "precision": args.precision, "compile": args.compile, "tf32": args.tf32,
        "batch_size": args.batch_size, "workers": args.workers, "frame_batch": args.frame_batch,
        "segment_batch": args.segment_batch, "command": " ".join(sys.argv),
        "video": f"{args.width}x{args.height}, 25 fps, {args.seconds:g} s, {args.unique} unique files",
    }
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32, as in the reference
        torch.backends.cudnn.allow_tf32 = False
    with contextlib.ExitStack() as stack:
        root = args.root or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        runs = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=root)))  # stores, deleted after
        video_dir, video_tsv = make_videos(root, args.unique, args.videos, args.width, args.height, args.seconds)
        results["decode_only"] = decode_only(video_dir, video_tsv, args.batch_size, args.workers)
        write(results, args.out)
        encoders = build_encoders(root, args, device)
        batch = synthetic_batch(args.batch_size, device)
        results["encoders_only"] = {}
        for mode in args.encoder_modes:
            probe = ExtractVideoFeatures(output_dir=runs / "unused", video_dir=root, video_tsv=video_tsv,
                                         **encoders, precision="fp32" if mode == "fp32" else "bf16",
                                         compile=mode == "bf16-compile", tf32=False)
            results["encoders_only"][mode] = encoders_only(probe, batch, warmup=1, timed=2 if mode == "fp32" else 3)
            write(results, args.out)
        if not args.encoders_only:
            _, results["warmup_run"] = extraction_run(root, runs, "warmup", encoders, args, args.warmup_videos)
            write(results, args.out)
            program, results["timed_run"] = extraction_run(root, runs, "timed", encoders, args, args.videos)
            write(results, args.out)  # kept even if the call's time runs out in the next stage
            results["encoders_only_after_warmup"] = encoders_only(program, batch, warmup=1, timed=3)
            write(results, args.out)
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                results["profile"] = profile_encoders(program, batch, args.profile)
    dist.shutdown()
    print(write(results, args.out))


if __name__ == "__main__":
    main()
