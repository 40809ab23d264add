"""The mathematics of av-benchmark's metrics, on plain arrays.

Every function here reproduces what av-benchmark (hkchengrex/av-benchmark) computes from its
feature caches, so numbers from mmgin and from the benchmark are comparable; the details that
move the values (float64 covariances, the inception-score shuffle, the KL direction) are taken
from the benchmark. Inputs are numpy arrays or torch tensors; outputs are Python floats.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import scipy.linalg
import torch
from absl import logging

ArrayLike = np.ndarray | torch.Tensor

FD_SQRTM_OFFSET = 1e-6
FD_MAX_IMAGINARY = 1e-3
FD_FAILED = -1.0

ISC_SPLITS = 10
ISC_SEED = 2020

DESYNC_GRID = (-2.0, 2.0, 21)
DESYNC_WINDOW_SEGMENTS = 14
DESYNC_BATCH_SIZE = 16


def _as_float64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_matrix(name: str, x: np.ndarray) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix [samples, dims], got shape {x.shape}")


def frechet_distance(pred: ArrayLike, gt: ArrayLike, method: str = "auto") -> float:
    """Fréchet distance between Gaussians fitted to two sets of row vectors.

    FD = |mu_p - mu_g|^2 + tr S_p + tr S_g - 2 tr (S_p S_g)^(1/2), with unbiased covariances,
    all in float64: the sets are often smaller than the embedding width, so the covariances
    are rank-deficient and float32 would miss the benchmark by percents.

    The last trace is computed two ways (`method`):
    - 'sqrtm', av-benchmark's procedure: scipy `sqrtm` of the product; a non-finite result is
      retried with 1e-6 added to both diagonals; imaginary parts are dropped when every
      diagonal one is at most 1e-3, else the FD is reported as -1.
    - 'low_rank', exact when a set has fewer rows than dimensions: the nonzero eigenvalues of
      S_p S_g are the squared singular values of Xc Yc^T / sqrt((n-1)(m-1)) (centred rows), so
      the trace is that matrix's nuclear norm. It needs an n x m SVD instead of a d x d matrix
      square root (2048-d PANNs with 100 rows: milliseconds instead of a minute) and agrees
      with 'sqrtm' to ~1e-8 relative.
    'auto' takes 'low_rank' when min(n, m) < d and 'sqrtm' otherwise.
    """
    x, y = _as_float64(pred), _as_float64(gt)
    _check_matrix("pred", x)
    _check_matrix("gt", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"FD needs equal widths: pred {x.shape}, gt {y.shape}")
    if method not in ("auto", "sqrtm", "low_rank"):
        raise ValueError(f"FD method {method!r}: expected 'auto', 'sqrtm' or 'low_rank'")
    (n, d), m = x.shape, y.shape[0]
    if n < 2 or m < 2:
        logging.warning("FD needs at least 2 samples per set (pred %d, gt %d); reporting %s",
                        n, m, FD_FAILED)
        return FD_FAILED
    if method == "auto":
        method = "low_rank" if min(n, m) < d else "sqrtm"
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    diff = mu_x - mu_y
    try:
        if method == "low_rank":
            xc, yc = x - mu_x, y - mu_y
            tr_x = (xc * xc).sum() / (n - 1)
            tr_y = (yc * yc).sum() / (m - 1)
            cross = (xc @ yc.T) / np.sqrt((n - 1) * (m - 1))
            tr_covmean = np.linalg.svd(cross, compute_uv=False).sum()
            if not np.isfinite(tr_covmean):
                raise ValueError("non-finite singular values")
        else:
            sigma_x, sigma_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
            covmean = _sqrtm(sigma_x @ sigma_y)
            if not np.isfinite(covmean).all():
                logging.warning("FD: sqrtm not finite; retrying with %g added to the diagonals",
                                FD_SQRTM_OFFSET)
                offset = np.eye(d) * FD_SQRTM_OFFSET
                covmean = _sqrtm((sigma_x + offset) @ (sigma_y + offset))
            if np.iscomplexobj(covmean):
                largest = np.abs(np.diagonal(covmean).imag).max()
                if largest > FD_MAX_IMAGINARY:
                    raise ValueError(f"imaginary component {largest:.3g} on the sqrtm diagonal")
                covmean = covmean.real
            tr_x, tr_y, tr_covmean = np.trace(sigma_x), np.trace(sigma_y), np.trace(covmean)
    except (ValueError, np.linalg.LinAlgError) as e:
        logging.warning("FD failed (%s); reporting %s", e, FD_FAILED)
        return FD_FAILED
    return float(diff @ diff + tr_x + tr_y - 2.0 * tr_covmean)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # Rank-deficient covariances make sqrtm warn that the matrix is singular; the benchmark
    # gets the same warning and keeps the result, so it is not worth a line per evaluation.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return scipy.linalg.sqrtm(a)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def mean_kl_softmax(gt_logits: ArrayLike, pred_logits: ArrayLike) -> float:
    """Mean over paired rows of KL(softmax(gt) || softmax(pred)), summed over classes."""
    p_log, q_log = _log_softmax(_as_float64(gt_logits)), _log_softmax(_as_float64(pred_logits))
    if p_log.shape != q_log.shape:
        raise ValueError(f"KL needs paired rows: gt {p_log.shape}, pred {q_log.shape}")
    if p_log.shape[0] == 0:
        raise ValueError("KL over an empty paired set")
    return float((np.exp(p_log) * (p_log - q_log)).sum(axis=1).mean())


def inception_score(
    logits: ArrayLike, splits: int = ISC_SPLITS, seed: int | None = ISC_SEED
) -> tuple[float, float]:
    """Inception score of class logits: (mean, population std) over `splits` chunks.

    Rows are shuffled with numpy's legacy RandomState(seed) (None: no shuffle), softmaxed in
    float64 and cut into contiguous chunks [floor(kN/s), floor((k+1)N/s)); each chunk scores
    exp(mean_i KL(p_i || mean_j p_j)).
    """
    log_p = _as_float64(logits)
    _check_matrix("logits", log_p)
    n = log_p.shape[0]
    if n < splits:
        raise ValueError(f"inception score needs at least {splits} rows, got {n}")
    if seed is not None:
        log_p = log_p[np.random.RandomState(seed).permutation(n)]
    log_p = _log_softmax(log_p)
    p = np.exp(log_p)
    scores = []
    for k in range(splits):
        lo, hi = k * n // splits, (k + 1) * n // splits
        log_q = np.log(p[lo:hi].mean(axis=0, keepdims=True))
        kl = (p[lo:hi] * (log_p[lo:hi] - log_q)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def mean_cosine_similarity(a: ArrayLike, b: ArrayLike, eps: float = 1e-8) -> float:
    """Mean over paired rows of a·b / (|a||b|) (IB-Score, LAION-/MS-CLAP-Score)."""
    x, y = _as_float64(a), _as_float64(b)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"cosine score needs paired matrices, got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("cosine score over an empty paired set")
    norms = np.sqrt(np.maximum((x * x).sum(axis=1) * (y * y).sum(axis=1), eps * eps))
    return float(((x * y).sum(axis=1) / norms).mean())


def desync_offset_grid() -> torch.Tensor:
    """The 21 audio-video offsets (seconds) Synchformer's sync head classifies.

    Built like Synchformer's class grid: numpy linspace in float64, then cast to float32.
    """
    return torch.from_numpy(np.linspace(*DESYNC_GRID)).float()


def desync_from_logits(logits: Sequence[ArrayLike]) -> float:
    """Mean |offset| of the arg-max class over every row of every logit block [n, 21]."""
    grid = desync_offset_grid()
    offsets = []
    for block in logits:
        block = torch.as_tensor(block)
        if block.ndim != 2 or block.shape[1] != grid.numel():
            raise ValueError(f"sync logits must be [n, {grid.numel()}], got {tuple(block.shape)}")
        offsets.extend(abs(grid[i].item()) for i in block.argmax(dim=-1).tolist())
    if not offsets:
        raise ValueError("DeSync over an empty paired set")
    return float(np.mean(offsets))


def desync(
    compare_v_a: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    video_features: torch.Tensor,
    audio_features: torch.Tensor,
    batch_size: int = DESYNC_BATCH_SIZE,
    window: int = DESYNC_WINDOW_SEGMENTS,
    device: torch.device | str = "cpu",
) -> float:
    """DeSync: mean |predicted offset| over the first and the last `window` segments.

    `compare_v_a(video[b, window, ...], audio[b, window, ...]) -> logits[b, 21]` is Synchformer's
    sync head; features are the paired [N, S, 8, 768] caches (S = 24 for 8 s, so each window
    covers 4.8 s).
    """
    if video_features.shape[0] != audio_features.shape[0]:
        raise ValueError(
            f"DeSync needs paired features: video {tuple(video_features.shape)}, "
            f"audio {tuple(audio_features.shape)}"
        )
    blocks = []
    for i in range(0, video_features.shape[0], batch_size):
        video = video_features[i : i + batch_size].to(device)
        audio = audio_features[i : i + batch_size].to(device)
        blocks.append(compare_v_a(video[:, :window], audio[:, :window]).float().cpu())
        blocks.append(compare_v_a(video[:, -window:], audio[:, -window:]).float().cpu())
    return desync_from_logits(blocks)
