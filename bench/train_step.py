"""Training-step throughput of the MMAudio network: samples/s, memory and MFU.

Runs the training program's own step (mmgin.train.trainer.Trainer.train_step) on synthetic
features already on the device: the compiled FlowLoss (torch.compile fullgraph) inside DDP on a
one-rank process group, as the reference's measurement ran it, bf16 autocast, fused AdamW
(lr 1e-4, betas (0.9, 0.95), weight decay 1e-6, eps 1e-6), gradient clipping at 1.0, CFG
dropout 0.1. The Trainer wraps DDP only for world size > 1; here the bench wraps the same
compiled loss itself. Warm-up steps (compilation included) are not timed. One JSON line per
(variant, batch):

    python bench/train_step.py --variant small_16k --batch 256 --out r.json
    python bench/train_step.py --variant large_44k --batch 64 --profile prof/
    python bench/train_step.py --variant large_44k --batch 16 32 48 --dynamic --memory_cap_gib 23
    python bench/train_step.py --device cpu --variant tiny_16k --batch 2 --steps 2 --warmup 1

`--memory_cap_gib` caps the caching allocator (set_per_process_memory_fraction): a batch that
needs more is recorded with "oom": true and larger batches of that variant are skipped.
`--dynamic` compiles once with a symbolic batch, so a batch sweep costs one compilation.
`--profile DIR` writes, per configuration, the top kernels and their share of the step.
`--gpu_lock FILE` lets several of these processes share one GPU (their peaks must fit together):
compilation, which is CPU work, overlaps; the timed and profiled steps run one process at a time.

MFU = analytic training FLOPs (mmgin.model.flops) / step time / --peak_flops (default: the
device's dense peak for the precision, mmgin.train.metrics.peak_flops: 989e12 for an H100 in
bf16; none on a CPU or an unknown GPU, which then report no MFU).
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import fcntl
import functools
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch._functorch.config
import torch._inductor.config
import torch.distributed as dist
from torch import nn

from mmgin import io
from mmgin.model import FlowMatching, MMAudio, network_kwargs
from mmgin.model.flops import training_flops_per_sample
from mmgin.testing.recipe import recipe_rule
from mmgin.train.metrics import peak_flops
from mmgin.train.optim import adamw
from mmgin.train.trainer import StepConfig, Trainer, wrap_ddp

CFG_DROPOUT = 0.1
GIB = 2**30


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["small_16k"])
    parser.add_argument("--batch", nargs="+", type=int, default=[16], help="per-GPU batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode (default: none)")
    parser.add_argument("--dynamic", action="store_true", help="compile with a symbolic batch")
    parser.add_argument("--no-ddp", dest="ddp", action="store_false",
                        help="call the compiled loss directly instead of through one-rank DDP")
    parser.add_argument("--bucket_cap_mb", type=float, default=None,
                        help="DDP bucket size (default: DDP's 25 MB); DDPOptimizer splits the "
                             "compiled graph at bucket boundaries (25 MB: about one graph per block)")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default=None,
        help="StepConfig.precision: bf16 (default on CUDA) or fp32 (default on CPU, where bf16 is emulated)",
    )
    parser.add_argument("--activation-checkpointing", nargs="?", const="full", default=False,
                        choices=["full", "selective"], help="recompute blocks in the backward (default: full)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--peak_flops", type=float, default=None,
                        help="peak FLOP/s of one device for MFU (default: the device's, if known)")
    parser.add_argument("--memory_cap_gib", type=float, default=None)
    parser.add_argument("--functorch_config", action="append", default=[], metavar="NAME=VALUE",
                        help="set torch._functorch.config.NAME (partitioner knobs); repeatable")
    parser.add_argument("--inductor_config", action="append", default=[], metavar="NAME=VALUE",
                        help="set torch._inductor.config.NAME (fusion and tuning knobs); repeatable")
    parser.add_argument("--gpu_lock", type=Path, default=None,
                        help="a lock file shared with other bench processes on the same GPU: they build, "
                             "compile and warm up at the same time and time their steps one at a time")
    parser.add_argument("--profile", type=Path, default=None, help="folder for kernel tables")
    parser.add_argument("--tag", default="", help="a name for this configuration in its record and profile file")
    parser.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    return parser.parse_args(argv)


def init_single_rank_group(device: torch.device) -> None:
    """A one-process group, so DDP's hooks and bucketing run as in a real job."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


@torch.no_grad()
def recipe_like_init_(network: nn.Module, generator: torch.Generator) -> None:
    """Weights like the deterministic recipe: 0.02 n, or 1 + 0.02 n for norm weights and std.

    The reference initialisation zeroes every gate, which would make the step unrealistically
    cheap to optimise; this keeps all paths live. Drawn on the device, so 1 B parameters take
    a moment rather than minutes.
    """
    for name, param in network.named_parameters():
        param.normal_(0.0, 0.02, generator=generator)
        if recipe_rule(name) in ("norm", "std"):
            param.add_(1.0)


def build_network(variant: str, device: torch.device, checkpointing: bool | str) -> MMAudio:
    with torch.device("meta"):
        network = MMAudio(**network_kwargs(variant), activation_checkpointing=checkpointing)
    network.to_empty(device=device)
    network.init_buffers()
    recipe_like_init_(network, torch.Generator(device=device).manual_seed(0))
    return network.train()


def synthetic_batch(network: MMAudio, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch as the loader yields it (all modalities present), on the device."""
    g = torch.Generator(device=device).manual_seed(1)
    shape = (batch, network.latent_seq_len, network.latent_dim)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, device=device)

    return {
        "a_mean": randn(*shape),
        "a_std": torch.rand(shape, generator=g, device=device) * 0.9 + 0.1,
        "clip_features": randn(batch, network.clip_seq_len, 1024),
        "sync_features": randn(batch, network.sync_seq_len, 768),
        "text_features": randn(batch, network.text_seq_len, 1024),
        "video_exist": torch.ones(batch, dtype=torch.bool, device=device),
        "text_exist": torch.ones(batch, dtype=torch.bool, device=device),
    }


def build_trainer(args: argparse.Namespace, network: MMAudio, device: torch.device) -> Trainer:
    """The training program's Trainer; compiled and DDP-wrapped here with the bench's options."""
    step = StepConfig(
        precision=args.precision or ("bf16" if device.type == "cuda" else "fp32"), compile=False,
        optimizer=functools.partial(adamw, learning_rate=1e-4), lr_schedule=lambda step: 1.0,
        clip_grad_norm=1.0, grad_scaler=False, null_condition_probability=CFG_DROPOUT,
    )
    trainer = Trainer(network, FlowMatching(), device, step, virtual_ranks=[0], seed=0)
    if args.compile:
        trainer.loss_fn = torch.compile(
            trainer.loss_fn, fullgraph=True, backend=args.compile_backend,
            mode=args.compile_mode, dynamic=True if args.dynamic else None,
        )
    trainer.model = trainer.loss_fn
    if args.ddp:
        # DDP's own forward stays eager; the compiled loss runs inside it, as in Trainer.
        trainer.model = wrap_ddp(trainer.loss_fn, device, bucket_cap_mb=args.bucket_cap_mb)
        trainer.distributed = True
    return trainer


class GpuTurns:
    """Shared use of one GPU by several bench processes through an flock'ed file: building,
    compiling and warming up hold a shared lock; timing holds it exclusively, so no other
    process runs kernels during a timed step. Without a file, every turn is the process's own."""

    def __init__(self, path: Path | None) -> None:
        self.file = None if path is None else open(path, "a")
        self._lock(fcntl.LOCK_SH)

    def _lock(self, mode: int) -> None:
        if self.file is not None:
            fcntl.flock(self.file, mode)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        self._lock(fcntl.LOCK_UN)  # no upgrade in place: two upgrading holders would deadlock
        self._lock(fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._lock(fcntl.LOCK_UN)
            self._lock(fcntl.LOCK_SH)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kernel_category(name: str) -> str:
    """Triton kernels first (inductor names them after the ops they feed, attention included),
    attention before convolution (cuDNN's SDPA kernels are named '..._sdpa_..._fprop_...')."""
    lowered = name.lower()
    if lowered.startswith("triton"):
        return "fused elementwise (triton)"
    if any(k in lowered for k in ("flash", "fmha", "attention", "sdpa")):
        return "attention"
    if any(k in lowered for k in ("conv", "fprop", "dgrad", "wgrad", "implicit_gemm")):
        return "convolution"
    if any(k in lowered for k in ("gemm", "nvjet", "cutlass", "xmma", "sm90_")):
        return "matmul"
    if "nccl" in lowered:
        return "communication"
    if any(k in lowered for k in ("adam", "multi_tensor", "foreach")):
        return "optimizer"
    return "other (eager elementwise, copies, reductions)"


def profile_calls(step: Callable[[], Any], steps: int, device: torch.device) -> dict[str, Any]:
    """Kernel times over `steps` calls of ``step``: top kernels, categories, GPU-busy share of wall
    time (also used by bench/extract.py for the encoders)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    wall_us = (time.perf_counter() - start) * 1e6
    kernels: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        # Ranges such as "DistributedDataParallel.forward" also appear on the device timeline
        # as user annotations; they overlap the kernels and are not counted.
        if event.device_type == torch.autograd.DeviceType.CUDA and not getattr(
            event, "is_user_annotation", False
        ):
            entry = kernels[event.name]
            entry[0] += event.time_range.elapsed_us()
            entry[1] += 1
    total = sum(v[0] for v in kernels.values()) or 1.0
    categories: dict[str, float] = collections.defaultdict(float)
    for name, (us, _) in kernels.items():
        categories[kernel_category(name)] += us
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:60]
    return {
        "steps": steps,
        "wall_ms_per_step": wall_us / steps / 1e3,
        "kernel_ms_per_step": total / steps / 1e3,
        "kernel_launches_per_step": sum(v[1] for v in kernels.values()) / steps,
        "categories": {k: {"ms_per_step": v / steps / 1e3, "share": v / total}
                       for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:160], "ms_per_step": us / steps / 1e3, "share": us / total,
             "calls_per_step": calls / steps, "category": kernel_category(name)}
            for name, (us, calls) in top
        ],
    }


def write_profile(path: Path, config: str, report: dict[str, Any]) -> None:
    lines = [f"# {config}",
             f"wall {report['wall_ms_per_step']:.2f} ms/step, kernels "
             f"{report['kernel_ms_per_step']:.2f} ms/step, "
             f"{report['kernel_launches_per_step']:.0f} launches/step", "", "## categories"]
    for name, c in report["categories"].items():
        lines.append(f"{c['ms_per_step']:9.2f} ms {100 * c['share']:5.1f}%  {name}")
    lines += ["", "## top kernels (ms/step, share of kernel time, calls/step)"]
    for k in report["top_kernels"]:
        lines.append(f"{k['ms_per_step']:9.3f} ms {100 * k['share']:5.1f}% "
                     f"{k['calls_per_step']:6.1f}x  {k['name']}")
    io.write_text(path, "\n".join(lines) + "\n")


def run_batch(
    args: argparse.Namespace, trainer: Trainer, variant: str, batch: int, device: torch.device, turns: GpuTurns
) -> dict[str, Any]:
    network = trainer.network
    data = synthetic_batch(network, batch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    trainer.train_step([data])
    synchronize(device)
    first_step_s = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        trainer.train_step([data])
    trainer.collect_window()  # host sync; resets the loss window
    warmup_peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    with turns.alone():
        if device.type == "cuda":
            # Steady state: DDP's gradients become bucket views only after the first step.
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step([data])
        synchronize(device)
        step_time = (time.perf_counter() - start) / args.steps
    window = trainer.collect_window()
    flops = training_flops_per_sample(network)
    peak = peak_flops(device, trainer.config.precision, None if args.peak_flops is None else args.peak_flops / 1e12)
    result = {
        "variant": variant,
        "batch": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "samples_per_s": batch / step_time,
        "step_time_s": step_time,
        "first_step_s": first_step_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        "warmup_peak_memory_gib": warmup_peak,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if device.type == "cuda" else None,
        "mfu": flops * batch / step_time / peak if peak else None,
        "train_tflops_per_sample": flops / 1e12,
        "precision": trainer.config.precision,
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "compile_mode": args.compile_mode if args.compile else None,
        "dynamic": args.dynamic,
        "ddp": args.ddp,
        "bucket_cap_mb": args.bucket_cap_mb if args.ddp else None,
        "activation_checkpointing": args.activation_checkpointing,
        "memory_cap_gib": args.memory_cap_gib,
        "functorch_config": args.functorch_config,
        "inductor_config": args.inductor_config,
        "tag": args.tag,
        "steps": args.steps,
        "warmup": args.warmup,
        "final_loss": float(window["loss"]),
        "grad_norm": float(window["grad_norm"]),
        "torch": torch.__version__,
    }
    if args.profile is not None:
        with turns.alone():
            report = profile_calls(lambda: trainer.train_step([data]), 3, device)
        checkpointing = f"_ac_{args.activation_checkpointing}" if args.activation_checkpointing else ""
        ddp = "" if not args.ddp else "_ddp" if args.bucket_cap_mb is None else f"_ddp{args.bucket_cap_mb:g}mb"
        config = f"{variant}_b{batch}{checkpointing}{ddp}{'_' + args.tag if args.tag else ''}"
        write_profile(args.profile / f"profile_{config}.txt", config, report)
        result["profile"] = {k: report[k] for k in
                             ("wall_ms_per_step", "kernel_ms_per_step", "kernel_launches_per_step",
                              "categories")}
    return result


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_variant(
    args: argparse.Namespace, variant: str, device: torch.device, turns: GpuTurns
) -> list[dict[str, Any]]:
    """All batches of one variant: one network and trainer (one compilation with --dynamic)."""
    results = []
    trainer = None
    for batch in args.batch:
        if trainer is None or not args.dynamic:
            trainer = None
            torch._dynamo.reset()
            free_memory(device)
            trainer = build_trainer(args, build_network(variant, device, args.activation_checkpointing), device)
        try:
            result = run_batch(args, trainer, variant, batch, device, turns)
        except torch.OutOfMemoryError:
            trainer.optimizer.zero_grad(set_to_none=True)
            result = {"variant": variant, "batch": batch, "oom": True,
                      "memory_cap_gib": args.memory_cap_gib,
                      "activation_checkpointing": args.activation_checkpointing}
        print(json.dumps(result), flush=True)
        results.append(result)
        if result.get("oom"):
            break  # larger batches of this variant need more memory still
    del trainer
    torch._dynamo.reset()
    free_memory(device)
    return results


def main(argv: list[str]) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but CUDA is not available; use --device cpu")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if args.memory_cap_gib is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * GIB / total), device)
    else:
        device = torch.device("cpu")
    for flag, config in (("--functorch_config", torch._functorch.config), ("--inductor_config", torch._inductor.config)):
        for item in getattr(args, flag[2:]):
            name, value = item.split("=", 1)
            if not hasattr(config, name):
                raise SystemExit(f"{flag} {item}: {config.__name__} has no {name!r}")
            setattr(config, name, ast.literal_eval(value))
    turns = GpuTurns(args.gpu_lock)
    init_single_rank_group(device)
    results: list[dict[str, Any]] = []
    # dynamic=True alone would also make Python float attributes (FlowMatching.min_sigma)
    # symbolic; DDPOptimizer then passes that SymFloat out of its first bucket subgraph, and
    # AOTAutograd fails on the float graph output ("'float' object has no attribute 'meta'",
    # torch 2.11). Only the batch needs to be symbolic.
    floats = torch._dynamo.config.patch(specialize_float=True) if args.dynamic else contextlib.nullcontext()
    try:
        with floats:
            for variant in args.variant:
                results.extend(run_variant(args, variant, device, turns))
                if args.out is not None:
                    io.write_text(args.out, json.dumps(results, indent=1) + "\n")
    finally:
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
