"""One optimizer step over a list of micro-batches, and the state a checkpoint needs.

The step: bf16 autocast (configurable), the compiled FlowLoss inside DDP (no_sync on the
accumulating micro-steps), AdamW, clipping by the pre-clip norm of the all-reduced gradients,
then EMA and scheduler. A non-finite norm (NaN loss, inf gradient) skips the update on every
rank alike — they see the same all-reduced gradients — and, with the fused AdamW, without
waiting for the device: the flag goes to the optimizer as `found_inf`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Callable, Iterator, Sequence

import gin
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mmgin import dist, precision
from mmgin.model import FlowMatching, MMAudio
from mmgin.train.batches import Batch, to_device
from mmgin.train.ddp_compile import keep_checkpoint_policies_in_ddp_splits
from mmgin.train.ema import PostHocEMA
from mmgin.train.metrics import NUM_T_BINS, LossByT
from mmgin.train.loss import FlowLoss, draw_noise, loss_inputs
from mmgin.train.optim import WarmupStepSchedule, adamw, lr_scheduler

# The optimizer's settings by the gin binding that sets them ('initial_lr' is the schedule's
# base learning rate).
OPTIMIZER_SETTINGS = {"initial_lr": "adamw.learning_rate", "betas": "adamw.betas",
                      "eps": "adamw.eps", "weight_decay": "adamw.weight_decay"}


class NonFiniteError(RuntimeError):
    """Too many updates in a row were skipped for non-finite loss or gradients."""


def require_positive(config: Any, *names: str) -> None:
    """Each of a config's `names` (None: unset) is >= 1; the error names the gin setting."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be >= 1, got {value}")


def cadence(every: int, last: int) -> Callable[[int], bool]:
    """When a component runs between steps: every `every` iterations and after the last one."""
    return lambda iteration: iteration % every == 0 or iteration == last


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StepConfig:
    """How one optimizer step runs (`Train.step = @StepConfig()`): precision, compile, torch
    settings, optimizer and schedule, clipping, CFG dropout and the non-finite skip limit.

    `lr_schedule` None is `WarmupStepSchedule()` (the paper's); `num_threads` None keeps torch's.
    """

    precision: str = "bf16"
    compile: bool = True
    tf32: bool = True
    deterministic: bool = False
    num_threads: int | None = None
    optimizer: Callable[..., torch.optim.Optimizer] = adamw
    lr_schedule: Callable[[int], float] | None = None
    clip_grad_norm: float | None = 1.0
    grad_scaler: bool = False
    null_condition_probability: float = 0.1
    independent_video_dropout: bool = False
    max_consecutive_skips: int = 10

    def __post_init__(self) -> None:
        precision.check("StepConfig.precision", self.precision)
        if self.lr_schedule is None:
            object.__setattr__(self, "lr_schedule", WarmupStepSchedule())
        require_positive(self, "num_threads", "max_consecutive_skips")
        if not 0 <= self.null_condition_probability <= 1:
            raise ValueError("StepConfig.null_condition_probability must be in [0, 1], "
                             f"got {self.null_condition_probability}")


@contextlib.contextmanager
def torch_settings(config: StepConfig, device: torch.device) -> Iterator[None]:
    """The step's torch settings (threads, deterministic algorithms, TF32, cuDNN autotuning)
    while the block runs, then the previous ones: a pipeline stage after Train keeps its own."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.benchmark)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    try:
        with precision.matmul_tf32(config.tf32):
            yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cudnn.benchmark = previous[2]


@gin.configurable(denylist=["loss_fn", "device"])
def wrap_ddp(loss_fn: nn.Module, device: torch.device, bucket_cap_mb: float | None = None) -> DistributedDataParallel:
    """DDP around the (compiled) loss. Gradients are views into the all-reduce buckets: no
    second fp32 gradient copy and no bucket-to-grad copies after each all-reduce (the peak
    memory, set by activations early in the backward, does not move; bench/NOTES.md).

    A compiled loss is split into one graph per bucket (DDPOptimizer), so all-reduces overlap
    the backward; each cut also ends fusion, and at DDP's default 25 MB (None: DDP's own
    default, with its small first bucket) small_16k's step is cut about once per block
    (``wrap_ddp.bucket_cap_mb`` trades the two). Selective checkpointing keeps its policy
    through the cuts (mmgin.train.ddp_compile)."""
    keep_checkpoint_policies_in_ddp_splits()
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(loss_fn, device_ids=device_ids, broadcast_buffers=False,
                                   gradient_as_bucket_view=True, bucket_cap_mb=bucket_cap_mb)


class Trainer:
    """The model, optimizer, schedule, EMA and generators of one rank, and the step.

    The EMA is attached once the network holds its starting weights (`Train.run`): its
    profiles start as copies of them.
    """

    def __init__(self, network: MMAudio, flow: FlowMatching, device: torch.device, config: StepConfig, *,
                 virtual_ranks: Sequence[int], seed: int):
        self.network = network
        self.flow = flow
        self.device = device
        self.config = config
        self.accumulation = len(virtual_ranks)
        self.ema: PostHocEMA | None = None
        self.loss_fn: nn.Module = FlowLoss(network, flow)
        if config.compile:
            self.loss_fn = torch.compile(self.loss_fn, fullgraph=True)
        self.distributed = dist.world_size() > 1
        self.model: nn.Module = self.loss_fn
        if self.distributed:
            self.model = wrap_ddp(self.loss_fn, device)
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = config.optimizer(self.params, precision=config.precision)
        self.scheduler = lr_scheduler(self.optimizer, config.lr_schedule)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2048) if config.grad_scaler else None
        self.generators = [torch.Generator(device).manual_seed(seed + v) for v in virtual_ranks]
        # Validation and sampling draw from clones of the initial state: same noise every pass.
        self.initial_generator_states = [g.get_state() for g in self.generators]
        self.iteration = 0
        self.loss_by_t = LossByT(device)
        zeros = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        self.window = {k: zeros() for k in ("loss_sum", "loss_count", "norm_sum", "norm_count")}
        self.skipped_total = zeros()
        self.consecutive_skips = zeros()
        self.max_consecutive_skips = zeros()

    def autocast(self) -> contextlib.AbstractContextManager:
        return precision.autocast(self.config.precision, self.device)

    def _grad_norm(self) -> torch.Tensor:
        if self.config.clip_grad_norm:
            return torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_grad_norm, foreach=True)
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads, foreach=True)

    def _optimizer_step(self, found_inf: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif getattr(self.optimizer, "_step_supports_amp_scaling", False) and self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = found_inf.float()
            self.optimizer.step()
        elif not bool(found_inf):  # unfused optimizers cannot skip on the device: one host sync
            self.optimizer.step()

    def train_step(self, micro_batches: Sequence[Batch]) -> None:
        """One optimizer step over this rank's micro-batches (len == accumulation)."""
        if len(micro_batches) != self.accumulation:
            raise ValueError(f"expected {self.accumulation} micro-batches, got {len(micro_batches)}")
        self.optimizer.zero_grad(set_to_none=True)
        for j, cpu_batch in enumerate(micro_batches):
            batch = to_device(cpu_batch, self.device)
            noise = draw_noise(batch["a_mean"], self.flow, self.generators[j],
                               self.config.null_condition_probability, self.config.independent_video_dropout)
            last = j == self.accumulation - 1
            sync = contextlib.nullcontext() if (last or not self.distributed) else self.model.no_sync()
            with sync:
                with self.autocast():
                    per_sample = self.model(**loss_inputs(batch, noise))
                loss = per_sample.mean() / self.accumulation
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            self._add_losses(noise.t, per_sample.detach())
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = self._grad_norm().detach()
        found_inf = ~torch.isfinite(norm)
        self._optimizer_step(found_inf)
        if self.ema is not None:
            self.ema.update()
        self.scheduler.step()
        self.iteration += 1
        self._add_step(norm, found_inf)

    @torch.no_grad()
    def _add_losses(self, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        finite = torch.isfinite(per_sample)
        clean = torch.where(finite, per_sample, torch.zeros_like(per_sample)).double()
        self.window["loss_sum"] += clean.sum()
        self.window["loss_count"] += finite.sum()
        self.loss_by_t.add(t, clean, valid=finite)

    @torch.no_grad()
    def _add_step(self, norm: torch.Tensor, found_inf: torch.Tensor) -> None:
        skipped = found_inf.double()
        self.window["norm_sum"] += torch.where(found_inf, torch.zeros_like(norm), norm).double()
        self.window["norm_count"] += 1 - skipped
        self.skipped_total += skipped
        self.consecutive_skips.mul_(skipped).add_(skipped)
        torch.maximum(self.max_consecutive_skips, self.consecutive_skips, out=self.max_consecutive_skips)

    def collect_window(self) -> dict[str, Any]:
        """Averages since the last call over all ranks (one all-reduce, one host sync); resets.

        The gradient norm and skip counters are the same on every rank (all-reduced gradients),
        so only the losses are reduced.
        """
        window = self.window
        reduced = torch.cat([torch.stack([window["loss_sum"], window["loss_count"]]),
                             self.loss_by_t.sums, self.loss_by_t.counts])
        dist.all_reduce_sum(reduced)
        local = torch.stack([window["norm_sum"], window["norm_count"], self.skipped_total,
                             self.max_consecutive_skips])
        host = torch.cat([reduced, local]).cpu().numpy()
        loss_sum, loss_count = host[0], host[1]
        bins = host[2:2 + 2 * NUM_T_BINS]
        norm_sum, norm_count, skipped_total, max_consecutive = host[2 + 2 * NUM_T_BINS:]
        for value in window.values():
            value.zero_()
        self.loss_by_t.reset()
        self.max_consecutive_skips.copy_(self.consecutive_skips)
        return {
            "loss": loss_sum / loss_count if loss_count > 0 else float("nan"),
            "grad_norm": norm_sum / norm_count if norm_count > 0 else float("nan"),
            "skipped_updates": float(skipped_total),
            "max_consecutive_skips": float(max_consecutive),
            "loss_by_t_sums": bins[:NUM_T_BINS],
            "loss_by_t_counts": bins[NUM_T_BINS:],
        }

    @property
    def learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict[str, Any]:
        """This rank's share of a checkpoint (the caller gathers RNG states over ranks). The
        scheduler's state is a record: a resume recomputes it from the iteration and the run's
        schedule (`load_state_dict`)."""
        return {
            "iteration": self.iteration,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "skipped_updates": float(self.skipped_total),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint of this run. The optimizer's moments come from it; its settings
        (learning rate, betas, eps, weight decay) and the schedule are this run's config's, from
        the checkpoint's iteration on: each one that changed is logged."""
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        iteration = int(state["iteration"])
        for group, settings in zip(self.optimizer.param_groups, configured):
            for key, value in settings.items():
                if key != "lr" and group.get(key) != value:
                    dist.log_main("%s = %s from iteration %d on (the checkpoint's: %s)",
                                  OPTIMIZER_SETTINGS.get(key, f"optimizer setting {key!r}"), value,
                                  iteration, group.get(key))
            group.update(settings)
        self.set_iteration(iteration)
        saved_rate = state["optimizer"]["param_groups"][0]["lr"]
        if saved_rate != self.learning_rate:
            dist.log_main("learning rate %.6g at iteration %d by this run's schedule (the checkpoint's: %.6g)",
                          self.learning_rate, iteration, saved_rate)
        if self.scaler is not None and state.get("grad_scaler") is not None:
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError("the checkpoint has no EMA state but this run keeps an EMA")
            self.ema.load_state_dict(state["ema"])
        self.skipped_total.fill_(float(state.get("skipped_updates", 0.0)))

    def set_iteration(self, iteration: int) -> None:
        """Puts the run at ``iteration``: the schedule's position and the learning rate this
        run's schedule gives there (what LambdaLR computes after that many steps)."""
        scheduler = self.scheduler
        scheduler.last_epoch = iteration
        scheduler._step_count = iteration + 1  # pylint: disable=protected-access
        rates = [base * fn(iteration) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = rates  # pylint: disable=protected-access  (what get_last_lr returns)
        self.iteration = iteration

    def eval_generators(self) -> list[torch.Generator]:
        """Fresh generators in the initial state of this rank's step generators."""
        return [torch.Generator(self.device).set_state(state) for state in self.initial_generator_states]
