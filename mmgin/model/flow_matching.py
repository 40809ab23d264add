"""Conditional flow matching: the training path and target, and samplers from noise to data.

x0 ~ N(0, I) is noise at t = 0 and x1 the normalized data at t = 1:
x_t = (1 - (1 - sigma_min) t) x0 + t x1 and the velocity target is x1 - (1 - sigma_min) x0.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import gin
import torch

from mmgin.model.ode import dopri5

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
INFERENCE_MODES = ("euler", "adaptive")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FlowMatching:
    """Training math and sampling of the rectified flow.

    t for training is logit-normal: sigmoid(N(0, 1) * scale + mean). ``inference_mode``
    'euler' takes ``num_steps`` steps on torch.linspace(0, 1 - min_sigma, num_steps + 1)
    computed on the CPU in float32, as the reference; 'adaptive' runs the in-house
    Dormand–Prince RK45 with ``rtol``/``atol`` and returns the state at t = 1.
    """

    min_sigma: float = 0.0
    inference_mode: str = "euler"
    num_steps: int = 25
    mean: float = 0.0
    scale: float = 1.0
    rtol: float = 1e-5
    atol: float = 1e-5

    def __post_init__(self) -> None:
        if self.inference_mode not in INFERENCE_MODES:
            raise ValueError(
                f"FlowMatching.inference_mode {self.inference_mode!r} is not one of {INFERENCE_MODES}"
            )
        if self.inference_mode == "euler" and self.num_steps < 1:
            raise ValueError(f"FlowMatching.num_steps must be >= 1 for Euler, got {self.num_steps}")

    # -------------------------------------------------------------------- training
    def sample_t(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """One logit-normal t per sample, shape (batch,)."""
        z = torch.randn(batch, device=device, generator=generator)
        return torch.sigmoid(z * self.scale + self.mean)

    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t on the straight path from noise x0 to data x1, t of shape (B,)."""
        t = t.view(-1, *([1] * (x0.dim() - 1)))
        return (1 - (1 - self.min_sigma) * t) * x0 + t * x1

    def get_x0_xt(
        self, x1: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws the noise x0 like x1 (``normal_`` with ``generator``) and returns (x0, x_t)."""
        x0 = torch.empty_like(x1).normal_(generator=generator)
        return x0, self.interpolate(x0, x1, t)

    def target(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return x1 - (1 - self.min_sigma) * x0

    def loss(self, pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared velocity error, shape (B,); the objective is its mean."""
        reduce_dims = list(range(1, pred.dim()))
        return (pred - self.target(x0, x1)).pow(2).mean(dim=reduce_dims)

    # -------------------------------------------------------------------- sampling
    def time_grid(self, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
        """The Euler grid: float32, on the CPU, ending min_sigma short of t1."""
        return torch.linspace(t0, t1 - self.min_sigma, self.num_steps + 1)

    def to_data(self, fn: Velocity, x0: torch.Tensor) -> torch.Tensor:
        """Integrates fn(t, x) from noise (t=0) to data (t=1)."""
        return self.run(fn, x0, 0.0, 1.0)

    def to_prior(self, fn: Velocity, x1: torch.Tensor) -> torch.Tensor:
        """Integrates fn(t, x) from data (t=1) back to noise (t=0)."""
        return self.run(fn, x1, 1.0, 0.0)

    def run(self, fn: Velocity, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
        if self.inference_mode == "adaptive":
            return dopri5(fn, x, t0, t1, rtol=self.rtol, atol=self.atol)
        steps = self.time_grid(t0, t1)
        for i in range(self.num_steps):
            t = steps[i]
            x = x + (steps[i + 1] - t) * fn(t, x)
        return x
