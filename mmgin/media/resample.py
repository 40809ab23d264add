"""Kaiser-windowed sinc resampling, bit for bit what the reference gets from torchaudio.

The reference resamples every waveform with ``torchaudio.transforms.Resample(orig, new,
lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method='sinc_interp_kaiser',
beta=14.769656459379492)``. torchaudio is in maintenance mode (2.11.x is its last line, built
for torch 2.11 only), so mmgin computes the same thing with torch alone; tests/test_resample.py
compares this module with torchaudio bit for bit while the dev environment still installs it.
When torchaudio can no longer be installed, delete that comparison: nothing else uses it.

The method. With both rates divided by their gcd (``o`` input and ``n`` output samples per
period), output sample ``j`` of each period is the dot product of the input with kernel row

    x = clamp(c * ((i - W) / o - j / n), -L, L)
    k_j[i] = s * sin(pi * x) / (pi * x) * I0(beta * sqrt(1 - (x / L)^2)) / I0(beta)

(the sinc is 1 at x = 0) for ``i`` in ``[0, 2W + o)``, where ``c = min(o, n) * rolloff`` is the
cut-off in samples of the reduced rates, ``L`` the low-pass width in zero crossings (64),
``W = ceil(L * o / c)`` the half width in input samples and ``s = c / o`` the gain. The kernels
are computed in float64 and kept as float32. The input is zero-padded by ``W`` on the left and
``W + o`` on the right and convolved with the ``n`` rows at stride ``o``; the interleaved
outputs are cut to ``ceil(n * T / o)`` samples.

Bit-exactness needs torchaudio's exact sequence of operations and roundings, kept below: the
output offsets ``-j / n`` are divided in float32 before they meet the float64 input offsets;
``beta`` and ``I0(beta)`` are float32 scalars; the output length is rounded through float32.
"""

from __future__ import annotations

import functools
import math

import torch

LOWPASS_FILTER_WIDTH = 64
ROLLOFF = 0.9475937167399596
KAISER_BETA = 14.769656459379492


@functools.lru_cache(maxsize=32)
def _resampler(orig_rate: int, new_rate: int) -> "KaiserResampler":
    return KaiserResampler(orig_rate, new_rate)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """``waveform`` (..., T) from ``orig_rate`` to ``new_rate`` Hz; the kernel is cached per rate pair."""
    if orig_rate == new_rate:
        return waveform
    return _resampler(int(orig_rate), int(new_rate))(waveform)


class KaiserResampler:
    """One rate pair's float32 kernel bank (``new`` rows, one per output phase) and its use."""

    def __init__(self, orig_rate: int, new_rate: int):
        if orig_rate <= 0 or new_rate <= 0 or int(orig_rate) != orig_rate or int(new_rate) != new_rate:
            raise ValueError(f"resampling needs positive integer rates, got {orig_rate} -> {new_rate} Hz")
        gcd = math.gcd(int(orig_rate), int(new_rate))
        self.orig, self.new = int(orig_rate) // gcd, int(new_rate) // gcd
        self.kernel, self.half_width = _kaiser_sinc_kernels(self.orig, self.new)

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        if not waveform.is_floating_point():
            raise TypeError(f"resampling needs a floating-point waveform, got {waveform.dtype}")
        if self.orig == self.new:
            return waveform
        leading, length = waveform.shape[:-1], waveform.shape[-1]
        flat = waveform.reshape(-1, length)
        padded = torch.nn.functional.pad(flat, (self.half_width, self.half_width + self.orig))
        kernel = self.kernel.to(device=waveform.device, dtype=waveform.dtype)
        phases = torch.nn.functional.conv1d(padded[:, None], kernel, stride=self.orig)
        interleaved = phases.transpose(1, 2).reshape(flat.shape[0], -1)
        out_length = int(torch.ceil(torch.as_tensor(self.new * length / self.orig)))
        return interleaved[:, :out_length].reshape(leading + (-1,))


def _kaiser_sinc_kernels(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """The (new, 1, 2W + orig) float32 kernel bank and the half width W, for reduced rates."""
    cutoff = min(orig, new) * ROLLOFF
    half_width = math.ceil(LOWPASS_FILTER_WIDTH * orig / cutoff)
    input_offsets = torch.arange(-half_width, half_width + orig, dtype=torch.float64)[None, None] / orig
    output_offsets = torch.arange(0, -new, -1)[:, None, None] / new  # float32, as torchaudio
    x = ((output_offsets + input_offsets) * cutoff).clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    beta = torch.tensor(KAISER_BETA, dtype=torch.float32)
    window = torch.i0(beta * torch.sqrt(1 - (x / LOWPASS_FILTER_WIDTH) ** 2)) / torch.i0(beta)
    phase = x * math.pi
    sinc = torch.where(phase == 0, torch.ones((), dtype=phase.dtype), phase.sin() / phase)
    kernels = sinc * (window * (cutoff / orig))
    return kernels.to(torch.float32), half_width
