"""Adaptive Dormand–Prince RK45 with error control (the 'dopri5' of torchdiffeq, in-house).

Used for sampling only, so it may synchronise with the device to pick step sizes.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Butcher tableau of Dormand & Prince (1980). The 5th-order weights equal the last stage's
# row (first same as last), so the derivative at the accepted point is reused.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_ERR = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0


def _rms(x: torch.Tensor) -> float:
    return float(x.float().pow(2).mean().sqrt())


def _time(t: float) -> torch.Tensor:
    return torch.tensor(t, dtype=torch.float32)


def _initial_step(
    fn: Velocity, t0: float, y0: torch.Tensor, f0: torch.Tensor, direction: float,
    rtol: float, atol: float,
) -> float:
    """Hairer, Nørsett & Wanner's starting step for a method of order 5."""
    scale = atol + rtol * y0.abs()
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = fn(_time(t0 + direction * h0), y0 + direction * h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def dopri5(
    fn: Velocity,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10000,
) -> torch.Tensor:
    """Integrates dy/dt = fn(t, y) from t0 to t1 and returns y(t1).

    A step is accepted when the RMS of error / (atol + rtol * max(|y|, |y_new|)) is at most 1;
    the next step size follows the usual h * 0.9 * err^(-1/5), bounded to [0.2, 10] times h.
    """
    if t0 == t1:
        return y0
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    t, y = t0, y0
    f = fn(_time(t), y)
    h = min(_initial_step(fn, t, y, f, direction, rtol, atol), span)
    done = 0.0
    for _ in range(max_steps):
        h = min(h, span - done)
        k = [f]
        for stage in range(1, 7):
            dy = sum(a * ki for a, ki in zip(_A[stage], k) if a != 0.0)
            k.append(fn(_time(t + direction * _C[stage] * h), y + direction * h * dy))
        y_new = y + direction * h * sum(b * ki for b, ki in zip(_B5, k) if b != 0.0)
        error = direction * h * sum(e * ki for e, ki in zip(_ERR, k) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        error_norm = _rms(error / scale)
        if error_norm <= 1.0:
            done += h
            t = t0 + direction * done
            y, f = y_new, k[6]
            if done >= span * (1 - 1e-12):
                return y
        if error_norm == 0.0:
            factor = _MAX_FACTOR
        else:
            factor = min(_MAX_FACTOR, max(_MIN_FACTOR, _SAFETY * error_norm ** (-1 / 5)))
        h *= factor
    raise RuntimeError(
        f"adaptive ODE solver did not reach t={t1} within {max_steps} steps (at t={t}); "
        "loosen rtol/atol or raise max_steps"
    )
