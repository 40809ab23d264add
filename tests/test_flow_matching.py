"""Flow-matching training math against the reference fixture, and the samplers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmgin.model import FlowMatching, MMAudio
from mmgin.model.ode import dopri5

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURES / "flow_matching.pt", weights_only=True)


def _check(fixture: dict, key: str, actual: torch.Tensor) -> None:
    tol = fixture["meta"]["tolerances"][key]
    torch.testing.assert_close(actual, fixture["outputs"][key], rtol=tol["rtol"], atol=tol["atol"])


def _normalizer(fixture: dict) -> MMAudio:
    """A meta-built network that only carries the small_16k recipe latent statistics."""
    with torch.device("meta"):
        network = MMAudio(latent_dim=20, hidden_dim=64, depth=2, fused_depth=1, num_heads=2,
                          latent_seq_len=250)
    network.latent_mean = torch.nn.Parameter(fixture["inputs"]["latent_mean"], requires_grad=False)
    network.latent_std = torch.nn.Parameter(fixture["inputs"]["latent_std"], requires_grad=False)
    return network


@pytest.mark.parametrize("min_sigma, suffix", [(0.0, ""), (0.05, "_min_sigma_0.05")])
def test_training_math_matches_reference(fixture: dict, min_sigma: float, suffix: str) -> None:
    inputs = fixture["inputs"]
    fm = FlowMatching(min_sigma=min_sigma)
    x1_raw = inputs["a_mean"] + inputs["a_std"] * inputs["a_randn"]
    _check(fixture, "x1_raw", x1_raw)
    x1 = x1_raw.clone()
    assert _normalizer(fixture).normalize(x1) is x1  # in place
    _check(fixture, "x1", x1)

    t = fm.sample_t(4, generator=torch.Generator().manual_seed(1014))
    _check(fixture, "t_logit_normal", t)

    x0, xt = fm.get_x0_xt(x1, t, generator=torch.Generator().manual_seed(1015))
    _check(fixture, "x0" + suffix, x0)
    _check(fixture, "xt" + suffix, xt)
    _check(fixture, "target" + suffix, fm.target(x0, x1))
    loss = fm.loss(inputs["pred"], x0, x1)
    assert loss.shape == (4,)
    _check(fixture, "loss" + suffix, loss)
    _check(fixture, "mean_loss" + suffix, loss.mean())
    _check(fixture, "steps" + suffix, fm.time_grid())


def test_logit_normal_mean_and_scale() -> None:
    g = torch.Generator().manual_seed(0)
    t = FlowMatching(mean=1.0, scale=0.5).sample_t(20000, generator=g)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 1.0) < 0.02 and abs(logit.std().item() - 0.5) < 0.02


def _linear_field(rate: torch.Tensor):
    calls = []

    def fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        calls.append(float(t))
        return rate * x

    return fn, calls


def test_euler_integrates_on_the_reference_grid() -> None:
    fm = FlowMatching(num_steps=4)
    fn, calls = _linear_field(torch.tensor(1.0))
    x = fm.to_data(fn, torch.ones(3))
    assert calls == [0.0, 0.25, 0.5, 0.75]
    torch.testing.assert_close(x, torch.full((3,), 1.25**4))
    with pytest.raises(ValueError, match="inference_mode 'rk4'"):
        FlowMatching(inference_mode="rk4")


def test_adaptive_solver_reaches_requested_accuracy() -> None:
    """dx/dt = a x (a per element, up to 3) has x(1) = exp(a) x0; the error shrinks with rtol."""
    rate = torch.linspace(-3.0, 3.0, 64, dtype=torch.float64)
    x0 = torch.ones(64, dtype=torch.float64)
    exact = torch.exp(rate)
    errors, evaluations = [], []
    for tol in (1e-4, 1e-8):
        fn, calls = _linear_field(rate)
        x1 = dopri5(fn, x0, 0.0, 1.0, rtol=tol, atol=tol)
        errors.append(((x1 - exact).abs() / (1 + exact)).max().item())
        evaluations.append(len(calls))
    assert errors[0] < 1e-3 and errors[1] < 1e-7  # global error within 10x the tolerance
    assert evaluations[0] < evaluations[1] < 500
    fn, calls = _linear_field(rate)
    back = dopri5(fn, exact, 1.0, 0.0, rtol=1e-8, atol=1e-8)  # integrates backwards too
    torch.testing.assert_close(back, x0, rtol=1e-6, atol=1e-6)


def test_adaptive_flow_matching_follows_a_straight_flow() -> None:
    """For a constant velocity x1 - x0 every method is exact: the adaptive one in few steps."""
    x0, x1 = torch.randn(2, 10, 4), torch.randn(2, 10, 4)
    fm = FlowMatching(inference_mode="adaptive")
    calls = []

    def fn(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return x1 - x0

    torch.testing.assert_close(fm.to_data(fn, x0), x1)
    assert len(calls) < 40
    torch.testing.assert_close(fm.to_prior(fn, x1), x0)


def test_adaptive_solver_gives_up_with_a_clear_error() -> None:
    def stiff(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -1e6 * (x - torch.cos(t))

    with pytest.raises(RuntimeError, match="did not reach t=1.0 within 5 steps"):
        dopri5(stiff, torch.ones(3), 0.0, 1.0, max_steps=5)
