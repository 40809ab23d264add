"""Training-step throughput of the MMAudio network: samples/s, memory and MFU.

Runs the reference training step on synthetic features already on the device: DDP (a
one-rank process group), bf16 autocast, torch.compile of forward + loss (fullgraph), fused
AdamW (lr 1e-4, betas (0.9, 0.95), weight decay 1e-6, eps 1e-6) and gradient clipping at 1.0.
Warm-up steps (compilation included) are not timed. One JSON line per (variant, batch):

    python bench/train_step.py --variant small_16k large_44k --batch 32 64 --out r.json
    python bench/train_step.py --device cpu --variant tiny_16k --batch 2 --steps 2 --warmup 1

MFU = analytic training FLOPs (mmgin.model.flops) / step time / --peak_flops (989e12: H100
SXM dense bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmgin import io
from mmgin.model import FlowMatching, MMAudio, network_kwargs
from mmgin.model.flops import training_flops_per_sample
from mmgin.testing.recipe import recipe_rule

H100_BF16_DENSE_FLOPS = 989e12
CFG_DROPOUT = 0.1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["small_16k"])
    parser.add_argument("--batch", nargs="+", type=int, default=[16], help="per-GPU batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument(
        "--autocast",
        choices=["bf16", "fp32"],
        default=None,
        help="bf16 autocast (default on CUDA) or fp32 (default on CPU, where bf16 is emulated)",
    )
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--peak_flops", type=float, default=H100_BF16_DENSE_FLOPS)
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


def build_network(variant: str, device: torch.device, checkpointing: bool) -> MMAudio:
    with torch.device("meta"):
        network = MMAudio(**network_kwargs(variant), activation_checkpointing=checkpointing)
    network.to_empty(device=device)
    network.init_buffers()
    recipe_like_init_(network, torch.Generator(device=device).manual_seed(0))
    return network.train()


def synthetic_batch(network: MMAudio, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(1)
    shape = (batch, network.latent_seq_len, network.latent_dim)
    return {
        "a_mean": torch.randn(shape, generator=g, device=device),
        "a_std": torch.rand(shape, generator=g, device=device) * 0.9 + 0.1,
        "clip_f": torch.randn(batch, network.clip_seq_len, 1024, generator=g, device=device),
        "sync_f": torch.randn(batch, network.sync_seq_len, 768, generator=g, device=device),
        "text_f": torch.randn(batch, network.text_seq_len, 1024, generator=g, device=device),
    }


class TrainingLoss(nn.Module):
    """The reference train_fn as one module, so one compiled graph covers all of it.

    Samples the VAE posterior, normalizes, drops video and text (CFG) with torch.where,
    draws logit-normal t and the noise, runs the network and returns the batch-mean loss.
    """

    def __init__(self, network: MMAudio, autocast_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__()
        self.network = network
        self.fm = FlowMatching()
        self.autocast_dtype = autocast_dtype

    def forward(
        self,
        a_mean: torch.Tensor,
        a_std: torch.Tensor,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
    ) -> torch.Tensor:
        net, batch, device = self.network, a_mean.shape[0], a_mean.device
        x1 = (a_mean + a_std * torch.randn_like(a_mean) - net.latent_mean) / net.latent_std
        drop_video = torch.rand(batch, 1, 1, device=device) < CFG_DROPOUT
        drop_text = torch.rand(batch, 1, 1, device=device) < CFG_DROPOUT
        clip_f = torch.where(drop_video, net.empty_clip_feat.unsqueeze(0), clip_f)
        sync_f = torch.where(drop_video, net.empty_sync_feat.unsqueeze(0), sync_f)
        text_f = torch.where(drop_text, net.empty_string_feat.unsqueeze(0), text_f)
        t = self.fm.sample_t(batch, device=device)
        x0, xt = self.fm.get_x0_xt(x1, t)
        enabled = self.autocast_dtype is not None
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=enabled):
            pred = net(xt, clip_f, sync_f, text_f, t)
        return self.fm.loss(pred.float(), x0, x1).mean()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(
    args: argparse.Namespace, variant: str, batch: int, device: torch.device
) -> dict[str, Any]:
    network = build_network(variant, device, args.activation_checkpointing)
    autocast = args.autocast or ("bf16" if device.type == "cuda" else "fp32")
    loss_module: nn.Module = TrainingLoss(network, torch.bfloat16 if autocast == "bf16" else None)
    if args.compile:
        # DDP's own forward is not traceable; compiling inside it keeps one full graph.
        loss_module = torch.compile(loss_module, fullgraph=True, backend=args.compile_backend)
    model = DistributedDataParallel(
        loss_module, device_ids=[device.index] if device.type == "cuda" else None
    )
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-6, eps=1e-6, fused=True
    )
    data = synthetic_batch(network, batch, device)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**data)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss

    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    step_time = (time.perf_counter() - start) / args.steps
    flops = training_flops_per_sample(network) * batch
    result = {
        "variant": variant,
        "batch": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "samples_per_s": batch / step_time,
        "step_time_s": step_time,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
        "mfu": flops / step_time / args.peak_flops,
        "train_tflops_per_sample": training_flops_per_sample(network) / 1e12,
        "autocast": autocast,
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "activation_checkpointing": args.activation_checkpointing,
        "steps": args.steps,
        "warmup": args.warmup,
        "final_loss": float(loss.detach()),
    }
    del model, optimizer, network, data
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


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
    else:
        device = torch.device("cpu")
    init_single_rank_group(device)
    results = []
    try:
        for variant in args.variant:
            for batch in args.batch:
                result = run_config(args, variant, batch, device)
                print(json.dumps(result), flush=True)
                results.append(result)
                if args.out is not None:
                    io.write_text(args.out, json.dumps(results, indent=1) + "\n")
    finally:
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
