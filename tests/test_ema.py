"""Post-hoc EMA: the power-EMA update, its snapshots, and Algorithm 3 synthesis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmgin import io
from mmgin.programs.synthesize_ema import SynthesizeEMA
from mmgin.train import ema as ema_lib


def test_gamma_is_the_largest_real_root_of_karras_cubic():
    for sigma_rel, expected in ((0.05, 16.97), (0.1, 6.94)):  # Karras et al. 2023, table 1
        gamma = ema_lib.sigma_rel_to_gamma(sigma_rel)
        inv = sigma_rel ** -2
        assert abs(gamma ** 3 + 7 * gamma ** 2 + (16 - inv) * gamma + 12 - inv) < 1e-6
        assert gamma == pytest.approx(expected, abs=0.01)
        # the width of the power profile with this gamma is sigma_rel again
        assert np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) == pytest.approx(sigma_rel)


def test_update_follows_the_power_ema_with_step_size_correction(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    net.register_buffer("stat", torch.zeros(2))
    ema = ema_lib.PostHocEMA(net, tmp_path / "ema", sigma_rels=(0.05, 0.1), snapshot_every=3)
    gammas = [ema_lib.sigma_rel_to_gamma(s) for s in (0.05, 0.1)]
    expected = None
    for step in range(1, 8):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net.stat.fill_(float(step))
        online = {k: v.double().clone() for k, v in net.state_dict().items()}
        if expected is None:
            expected = [dict(online) for _ in gammas]
        for profile, gamma in zip(expected, gammas):
            # beta as nitrous-ema computes it with update_every = 1 (s counted after the increment)
            beta = ((1 - 1 / (step + 1)) ** (1 + gamma) * (1 - 1 / (step + 2)) ** (1 + gamma)) ** 0.5
            for k in profile:
                profile[k] = profile[k] * beta + online[k] * (1 - beta)
        ema.update()
        if ema.snapshot_due():  # as Train writes them, after the step
            ema.write_snapshots()
    for index, profile in enumerate(expected):
        mine = ema.profile_state_dict(index)
        for k, v in profile.items():
            torch.testing.assert_close(mine[k].double(), v, rtol=1e-6, atol=1e-6)
    names = sorted(p.name for p in (tmp_path / "ema").glob("*.pt"))
    assert names == ["0.3.pt", "0.6.pt", "1.3.pt", "1.6.pt"]
    snapshot = io.load_torch(tmp_path / "ema" / "1.6.pt")
    assert set(snapshot) == {"ema_model.weight", "ema_model.bias", "ema_model.stat", "_extra_state"}
    assert snapshot["_extra_state"]["step"] == 6
    assert json.loads((tmp_path / "ema" / "profiles.json").read_text())["sigma_rels"] == [0.05, 0.1]


def _karras_algorithm_3(steps, gammas, t_r, gamma_r):
    """Karras et al. 2023, Algorithm 3, in float64 numpy with explicit loops."""
    def p_dot_p(t_a, g_a, t_b, g_b):
        t_ratio = t_a / t_b
        t_exp = g_b if t_a < t_b else -g_a
        return (g_a + 1) * (g_b + 1) * t_ratio ** t_exp / ((g_a + g_b + 1) * max(t_a, t_b))

    n = len(steps)
    a = np.array([[p_dot_p(steps[i], gammas[i], steps[j], gammas[j]) for j in range(n)] for i in range(n)])
    b = np.array([p_dot_p(steps[i], gammas[i], t_r, gamma_r) for i in range(n)])
    return np.linalg.solve(a, b)


def test_synthesize_ema_program_matches_algorithm_3(tmp_path):
    run = tmp_path / "run"
    folder = run / "ema_ckpts"
    sigma_rels = (0.05, 0.1)
    rng = np.random.default_rng(0)
    snapshots = {}
    for profile in range(2):
        for step in (100, 200, 300):
            values = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
            snapshots[(profile, step)] = values
            package = {f"ema_model.{k}": torch.from_numpy(v).float() for k, v in values.items()}
            package["_extra_state"] = {"initted": True, "step": step}
            io.save_torch(package, folder / f"{profile}.{step}.pt")
    # reference snapshots carry no profiles.json: the sigma_rels come from the config
    program = SynthesizeEMA(output_dir=run, snapshot_dir=folder, sigma_rel=0.08,
                            snapshot_sigma_rels=sigma_rels, output_name="ema.pth")
    program.run()
    result = io.load_torch(run / "ema.pth")

    keys = sorted(snapshots)
    gammas = [ema_lib.sigma_rel_to_gamma(sigma_rels[p]) for p, _ in keys]
    weights = _karras_algorithm_3([float(s) for _, s in keys], gammas, 300.0, ema_lib.sigma_rel_to_gamma(0.08))
    assert abs(weights.sum() - 1) < 0.05  # a proper average of the snapshots
    for name in ("w", "b"):
        # the float32 snapshots are what the program reads
        expected = sum(w * np.float32(snapshots[k][name]).astype(np.float64) for w, k in zip(weights, keys))
        assert result[name].dtype == torch.float32
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-5, atol=1e-5)

    # an earlier step uses only the snapshots taken up to it
    SynthesizeEMA(output_dir=run, snapshot_dir=folder, sigma_rel=0.08, step=200,
                  snapshot_sigma_rels=sigma_rels).run()
    early = io.load_torch(run / "ema_sigma0.08_step200.pth")
    keys = [k for k in keys if k[1] <= 200]
    gammas = [ema_lib.sigma_rel_to_gamma(sigma_rels[p]) for p, _ in keys]
    weights = _karras_algorithm_3([float(s) for _, s in keys], gammas, 200.0, ema_lib.sigma_rel_to_gamma(0.08))
    expected = sum(w * np.float32(snapshots[k]["w"]).astype(np.float64) for w, k in zip(weights, keys))
    np.testing.assert_allclose(early["w"].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_synthesis_without_profiles_or_snapshots_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ema_lib.find_snapshots(tmp_path / "nothing")
    (tmp_path / "ema").mkdir()
    io.save_torch({"ema_model.w": torch.zeros(1)}, tmp_path / "ema" / "2.10.pt")
    with pytest.raises(ValueError, match="profile 2 has no sigma_rel"):
        ema_lib.find_snapshots(tmp_path / "ema", (0.05, 0.1))
