"""Optimizer and learning-rate schedules of the Train program."""

from __future__ import annotations

import math

import pytest
import torch

from mmgin.train.optim import WarmupConstantSchedule, WarmupCosineSchedule, WarmupStepSchedule, adamw, lr_scheduler


def _lrs(scheduler, steps):
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_warmup_step_schedule_equals_the_reference_sequential_lr():
    """Reference: SequentialLR([LambdaLR((s+1)/(W+1)), MultiStepLR(m, 0.1)], milestones=[W])."""
    warmup, milestones = 4, [3, 6]
    param = torch.nn.Parameter(torch.zeros(1))
    reference_opt = torch.optim.SGD([param], lr=1e-4)
    reference = torch.optim.lr_scheduler.SequentialLR(
        reference_opt,
        [torch.optim.lr_scheduler.LambdaLR(reference_opt, lambda s: (s + 1) / (warmup + 1)),
         torch.optim.lr_scheduler.MultiStepLR(reference_opt, milestones, 0.1)],
        milestones=[warmup],
    )
    mine = lr_scheduler(torch.optim.SGD([param], lr=1e-4), WarmupStepSchedule(warmup, milestones, 0.1))
    expected, got = _lrs(reference, 15), _lrs(mine, 15)
    assert got == pytest.approx(expected, rel=1e-12)
    # the decays land at W + milestone, as FACTS §11.4 infers (241k and 271k in the paper)
    assert got[warmup + 2] == pytest.approx(1e-4) and got[warmup + 3] == pytest.approx(1e-5)
    assert got[warmup + 6] == pytest.approx(1e-6)


def test_paper_schedule_values():
    schedule = WarmupStepSchedule()
    assert schedule(0) == pytest.approx(1 / 1001)
    assert schedule(999) == pytest.approx(1000 / 1001)
    assert schedule(1000) == 1.0
    assert schedule(240_999) == 1.0 and schedule(241_000) == pytest.approx(0.1)
    assert schedule(271_000) == pytest.approx(0.01)


def test_constant_and_cosine_schedules():
    assert WarmupConstantSchedule(10)(4) == pytest.approx(5 / 11)
    assert WarmupConstantSchedule(10)(10_000) == 1.0
    cosine = WarmupCosineSchedule(total_steps=110, warmup_steps=10, final_factor=0.1)
    assert cosine(10) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine(110) == pytest.approx(0.1) and cosine(500) == pytest.approx(0.1)


def test_adamw_settings():
    net = torch.nn.Linear(2, 2)
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    opt = adamw(list(net.parameters()) + [frozen, net.weight], precision="bf16")
    group = opt.param_groups[0]
    assert len(group["params"]) == 2  # deduplicated, frozen left out
    assert group["lr"] == 1e-4 and group["weight_decay"] == 1e-6 and group["betas"] == (0.9, 0.95)
    assert group["eps"] == 1e-6 and group["fused"] is True
    assert adamw(net.parameters(), precision="fp32").param_groups[0]["eps"] == 1e-8
