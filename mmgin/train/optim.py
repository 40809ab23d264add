"""AdamW and learning-rate schedules (warmup, then step decay, constant or cosine).

Schedules are plain callables `step -> factor` wrapped in a LambdaLR, so the learning rate is a
pure function of the iteration: a resumed run needs nothing but the iteration to continue.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable, Sequence

import gin
import torch


@gin.configurable
def adamw(
    params: Iterable[torch.nn.Parameter],
    *,
    precision: str,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-6,
    betas: Sequence[float] = (0.9, 0.95),
    eps: float | None = None,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over every trainable parameter, weight decay on all of them (as the reference).

    `eps` defaults to 1e-6 under bf16 and 1e-8 otherwise. `fused` defaults to True on devices
    where torch has a fused kernel (CUDA, CPU): the fused kernel also honours `found_inf`, which
    lets the trainer skip a non-finite update on the device without a host sync.
    """
    unique: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    if not unique:
        raise ValueError("adamw: no trainable parameters")
    if eps is None:
        eps = 1e-6 if precision == "bf16" else 1e-8
    if fused is None:
        fused = unique[0].device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        unique, lr=learning_rate, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
        fused=fused,
    )


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """(s+1)/(W+1) during warmup: the reference's LambdaLR, which never reaches 1 before W."""
    return (step + 1) / (warmup_steps + 1)


@gin.configurable
class WarmupStepSchedule:
    """Linear warmup, then multiply by `gamma` at each milestone counted after the warmup.

    This is what the reference's SequentialLR([warmup, MultiStepLR], milestones=[W]) does: the
    MultiStepLR restarts at 0 when the warmup ends, so milestones [240k, 270k] with W = 1000 land
    at global iterations 241k and 271k.
    """

    def __init__(
        self,
        warmup_steps: int = 1000,
        milestones: Sequence[int] = (240_000, 270_000),
        gamma: float = 0.1,
    ):
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        self.warmup_steps = int(warmup_steps)
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        return self.gamma ** bisect.bisect_right(self.milestones, step - self.warmup_steps)


@gin.configurable
class WarmupConstantSchedule:
    """Linear warmup, then the base learning rate."""

    def __init__(self, warmup_steps: int = 1000):
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        return _warmup_factor(step, self.warmup_steps) if step < self.warmup_steps else 1.0


@gin.configurable
class WarmupCosineSchedule:
    """Linear warmup, then a half cosine from 1 to `final_factor` at `total_steps`."""

    def __init__(self, total_steps: int = 300_000, warmup_steps: int = 1000, final_factor: float = 0.0):
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_factor = float(final_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Callable[[int], float]
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
