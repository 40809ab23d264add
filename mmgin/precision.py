"""One precision vocabulary for every program: 'fp32', 'bf16', 'fp16'.

A program's `precision` names the autocast dtype of its compute ('fp32': none), on whatever
device it runs; a store's `feature_dtype` names its storage dtype with the same words. TF32 is
a separate switch (`tf32`), for float32 matmuls and convolutions on CUDA: `matmul_tf32` sets it
for a block and puts the previous settings back.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


def check(setting: str, precision: str, allowed: tuple[str, ...] = tuple(DTYPES)) -> str:
    """`precision` when it is one of `allowed`; else a ValueError naming the setting."""
    if precision not in allowed:
        raise ValueError(f"{setting}={precision!r}; use one of {', '.join(repr(a) for a in allowed)}")
    return precision


def dtype(precision: str) -> torch.dtype:
    """The torch dtype a precision name stands for."""
    return DTYPES[check("precision", precision)]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to the precision's dtype on `device` ('fp32': no autocast)."""
    if check("precision", precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


@contextlib.contextmanager
def matmul_tf32(enabled: bool) -> Iterator[None]:
    """TF32 float32 matmuls and convolutions on CUDA while the block runs, then the previous
    settings (a CPU has no TF32: its float32 stays strict)."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
