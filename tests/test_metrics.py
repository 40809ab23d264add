"""Metric mathematics against closed forms and float64 reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgin.eval import metrics
from mmgin.eval.pairing import clean_sample_name, pair_by_name


def _gaussian_set(rng: np.random.Generator, mean: np.ndarray, stds: np.ndarray, n: int) -> np.ndarray:
    """n rows whose sample mean is exactly `mean` and sample covariance exactly diag(stds²)."""
    d = mean.shape[0]
    # Orthonormal columns orthogonal to the all-ones vector: centred, uncorrelated, unit norm.
    basis = np.linalg.qr(np.concatenate([np.ones((n, 1)), rng.standard_normal((n, d))], axis=1))[0]
    z = basis[:, 1:] * np.sqrt(n - 1)
    return mean + z * stds


@pytest.mark.parametrize("method", ["sqrtm", "low_rank", "auto"])
def test_fd_of_gaussians_with_diagonal_covariances_matches_closed_form(method):
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    s_a, s_b = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)
    a, b = _gaussian_set(rng, mu_a, s_a, 40), _gaussian_set(rng, mu_b, s_b, 31)
    # Commuting (diagonal) covariances: tr sqrt(Sa Sb) = sum(sa sb), so FD = |dmu|² + sum (sa-sb)².
    expected = ((mu_a - mu_b) ** 2).sum() + ((s_a - s_b) ** 2).sum()
    assert metrics.frechet_distance(a, b, method=method) == pytest.approx(expected, rel=1e-10)


def test_fd_with_rank_deficient_covariances_matches_closed_form():
    """Fewer rows than dimensions (as for 2048-d PANNs embeddings of a small set)."""
    rng = np.random.default_rng(1)
    d, n = 40, 8
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    s_a, s_b = np.zeros(d), np.zeros(d)
    s_a[: n - 1] = rng.uniform(0.5, 2.0, n - 1)
    s_b[3 : 3 + n - 1] = rng.uniform(0.5, 2.0, n - 1)
    a = mu_a + (_gaussian_set(rng, np.zeros(n - 1), s_a[: n - 1], n) @ np.eye(n - 1, d))
    b = mu_b + (_gaussian_set(rng, np.zeros(n - 1), s_b[3 : 3 + n - 1], n) @ np.eye(n - 1, d, 3))
    expected = ((mu_a - mu_b) ** 2).sum() + ((s_a - s_b) ** 2).sum()
    assert metrics.frechet_distance(a, b, method="low_rank") == pytest.approx(expected, rel=1e-10)
    assert metrics.frechet_distance(a, b, method="sqrtm") == pytest.approx(expected, rel=1e-6)


def test_fd_methods_agree_on_general_rank_deficient_sets():
    rng = np.random.default_rng(2)
    mix = rng.standard_normal((16, 96))
    a = rng.standard_normal((30, 16)) @ mix + 0.1 * rng.standard_normal((30, 96))
    b = rng.standard_normal((25, 16)) @ mix * 1.3 + 0.5
    exact = metrics.frechet_distance(a, b, method="low_rank")
    assert metrics.frechet_distance(a, b, method="sqrtm") == pytest.approx(exact, rel=1e-6)
    assert metrics.frechet_distance(a, b) == exact  # auto picks low_rank (25 < 96)


def test_fd_of_identical_sets_is_zero_and_float32_input_is_accumulated_in_float64():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 32)).astype(np.float32)
    assert abs(metrics.frechet_distance(x, x.copy())) < 1e-9
    assert abs(metrics.frechet_distance(torch.from_numpy(x), torch.from_numpy(x))) < 1e-9


def test_fd_reports_minus_one_when_it_cannot_be_computed():
    x = np.ones((5, 3))
    assert metrics.frechet_distance(x[:1], x) == metrics.FD_FAILED
    bad = np.random.default_rng(4).standard_normal((10, 3))
    bad[2, 1] = np.nan
    assert metrics.frechet_distance(bad, bad, method="sqrtm") == metrics.FD_FAILED
    assert metrics.frechet_distance(bad, bad, method="low_rank") == metrics.FD_FAILED
    with pytest.raises(ValueError, match="equal widths"):
        metrics.frechet_distance(np.ones((4, 3)), np.ones((4, 2)))


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kl_of_identical_distributions_is_zero_and_direction_is_gt_to_pred():
    rng = np.random.default_rng(5)
    gt, pred = rng.standard_normal((12, 7)), rng.standard_normal((12, 7)) * 2
    assert metrics.mean_kl_softmax(gt, gt) == pytest.approx(0.0, abs=1e-12)
    p, q = _softmax64(gt), _softmax64(pred)
    expected = np.mean([sum(p[i, c] * np.log(p[i, c] / q[i, c]) for c in range(7)) for i in range(12)])
    assert metrics.mean_kl_softmax(gt, pred) == pytest.approx(expected, rel=1e-12)
    reverse = np.mean((q * np.log(q / p)).sum(axis=1))
    assert abs(metrics.mean_kl_softmax(gt, pred) - reverse) > 1e-3


def test_kl_of_two_class_case_by_hand():
    # p = softmax([0, 0]) = (1/2, 1/2); q = softmax([log 3, 0]) = (3/4, 1/4).
    kl = metrics.mean_kl_softmax(np.array([[0.0, 0.0]]), np.array([[np.log(3.0), 0.0]]))
    assert kl == pytest.approx(0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25), rel=1e-14)


def test_inception_score_of_uniform_predictor_is_one():
    mean, std = metrics.inception_score(np.full((40, 9), 3.0))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_uniform_class_predictions_is_number_of_classes():
    classes = 6
    labels = np.tile(np.arange(classes), 10)  # every split of 6 rows holds each class once
    logits = 60.0 * np.eye(classes)[labels]
    mean, std = metrics.inception_score(logits, seed=None)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_shuffles_with_legacy_randomstate_2020_before_splitting():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((53, 11)) * 3
    shuffled = logits[np.random.RandomState(2020).permutation(53)]
    scores = []
    for k in range(10):
        p = _softmax64(shuffled[k * 53 // 10 : (k + 1) * 53 // 10])
        q = p.mean(axis=0)
        scores.append(np.exp(np.mean([(pi * np.log(pi / q)).sum() for pi in p])))
    mean, std = metrics.inception_score(logits)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores, ddof=0), rel=1e-10)
    assert metrics.inception_score(logits, seed=None)[0] != pytest.approx(mean, rel=1e-6)
    with pytest.raises(ValueError, match="at least 10"):
        metrics.inception_score(logits[:9])


def test_cosine_score_by_hand():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [4.0, -3.0], [-1.0, -1.0]])
    assert metrics.mean_cosine_similarity(a, b) == pytest.approx((1.0 + 0.0 - 1.0) / 3, abs=1e-15)
    assert metrics.mean_cosine_similarity(torch.tensor(a), torch.tensor(a)) == pytest.approx(1.0)


def test_desync_averages_absolute_offsets_of_first_and_last_windows():
    grid = np.linspace(-2.0, 2.0, 21)
    n, segments = 20, 24
    rng = np.random.default_rng(7)
    first, last = rng.integers(0, 21, n), rng.integers(0, 21, n)
    audio = torch.zeros(n, segments, 8, 4)
    audio[:, :10, 0, 0] = torch.from_numpy(first).float()[:, None]
    audio[:, 10:, 0, 0] = torch.from_numpy(last).float()[:, None]
    video = torch.zeros(n, segments, 8, 4)
    calls = []

    def sync_head(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        calls.append((v.shape[0], a.shape[1]))
        return torch.nn.functional.one_hot(a[:, 0, 0, 0].long(), 21).float()

    value = metrics.desync(sync_head, video, audio)
    expected = np.mean(np.abs(np.concatenate([grid[first], grid[last]])))
    assert value == pytest.approx(expected, abs=1e-6)
    assert calls == [(16, 14), (16, 14), (4, 14), (4, 14)]
    assert metrics.desync_offset_grid()[10].item() == 0.0


def test_clean_sample_name_uses_av_benchmark_length_rules():
    assert clean_sample_name("000000014_zxpo56cpUBU_000007-0") == "zxpo56cpUBU_000007"
    assert clean_sample_name("zxpo56cpUBU_000007-3") == "zxpo56cpUBU_000007"
    assert clean_sample_name("Y---g-f_I2yQ_000001_0") == "---g-f_I2yQ_000001"
    assert clean_sample_name("zxpo56cpUBU_000007") == "zxpo56cpUBU_000007"
    assert clean_sample_name("vid_031_alt") == "vid_031_alt"
    assert clean_sample_name("abcdefghijklmnopqrst") == "abcdefghijklmnopqr"  # length alone decides


def test_pairing_walks_pred_order_and_skips_unpaired_keys():
    gt = {"zxpo56cpUBU_000007": 1, "aaaaaaaaaaa_000001": 2, "gt_only": 3}
    pred = {"aaaaaaaaaaa_000001-0": 20, "pred_only": 99, "000000014_zxpo56cpUBU_000007-0": 10}
    p = pair_by_name(gt, pred)
    assert p.keys == ["aaaaaaaaaaa_000001", "zxpo56cpUBU_000007"]
    assert (p.gt, p.pred) == ([2, 1], [20, 10])
    assert p.pred_only == ["pred_only"] and p.gt_only == ["gt_only"]
    exact = pair_by_name(gt, pred, clean_names=False)
    assert exact.keys == [] and len(exact.pred_only) == 3
