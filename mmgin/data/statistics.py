"""Per-channel statistics of a large memory-mapped tensor, computed in chunks."""

from __future__ import annotations

import torch


class NonFiniteRows(ValueError):
    """The tensor holds NaN or infinite values; ``rows`` are their indices on the first axis."""

    def __init__(self, rows: list[int]):
        super().__init__(f"{len(rows)} rows hold non-finite values (first: {rows[:10]})")
        self.rows = rows


def channel_mean_std(tensor: torch.Tensor, chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std over every axis but the last, streaming over the first axis.

    Each chunk's count, mean and sum of squared deviations (float64) are merged with Chan et
    al.'s pairwise update, so the result is accurate for billions of values and only one chunk
    is ever in memory (the tensor may be a memmap far larger than RAM). Rows with a NaN or an
    infinity raise NonFiniteRows listing them all, found in the same pass: one such value would
    make every statistic NaN.
    """
    if tensor.shape[0] == 0:
        raise ValueError("cannot compute statistics of an empty tensor")
    channels = tensor.shape[-1]
    count = 0
    mean = torch.zeros(channels, dtype=torch.float64)
    m2 = torch.zeros(channels, dtype=torch.float64)
    non_finite: list[int] = []
    for start in range(0, tensor.shape[0], chunk_rows):
        rows = tensor[start:start + chunk_rows].to(torch.float64)
        finite = torch.isfinite(rows.reshape(rows.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            non_finite += (torch.nonzero(~finite).flatten() + start).tolist()
            continue
        chunk = rows.reshape(-1, channels)
        n = chunk.shape[0]
        chunk_mean = chunk.mean(dim=0)
        chunk_m2 = ((chunk - chunk_mean) ** 2).sum(dim=0)
        delta = chunk_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    if non_finite:
        raise NonFiniteRows(non_finite)
    if count < 2:
        raise ValueError("need at least two values per channel for an unbiased std")
    std = (m2 / (count - 1)).sqrt()
    return mean.to(torch.float32), std.to(torch.float32)
