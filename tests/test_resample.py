"""mmgin's Kaiser-best resampler against torchaudio's, bit for bit (see mmgin/media/resample.py).

torchaudio is installed by the dev lock only for this comparison; delete this file when the
project moves past torch 2.11 and torchaudio can no longer be installed.
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from mmgin.media.resample import KAISER_BETA, LOWPASS_FILTER_WIDTH, ROLLOFF, KaiserResampler, resample

# Every rate pair the programs meet (decoded media at common rates to 16 kHz and 44.1 kHz),
# upsampling, rates with a large reduced period (441 -> 640), and a tiny one.
RATE_PAIRS = [
    (48000, 16000), (44100, 16000), (32000, 16000), (22050, 16000), (8000, 16000),
    (48000, 44100), (16000, 44100), (96000, 44100), (11025, 44100), (11025, 16000), (3, 2),
]


def _torchaudio():
    """torchaudio, or a failure that says which pair is installed and how to fix it."""
    try:
        import torchaudio
    except (OSError, ImportError) as error:
        versions = {name: _version(name) for name in ("torch", "torchaudio")}
        pytest.fail(
            f"mmgin: torchaudio {versions['torchaudio']} cannot load against torch {versions['torch']} "
            f"({type(error).__name__}: {str(error)[:200]}); the dev lock pins torch 2.11.0 with "
            "torchaudio 2.11.0: run `.venv/bin/pip install -r requirements/dev.txt`"
        )
    return torchaudio


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _reference(orig: int, new: int):
    return _torchaudio().transforms.Resample(
        orig, new, lowpass_filter_width=LOWPASS_FILTER_WIDTH, rolloff=ROLLOFF,
        resampling_method="sinc_interp_kaiser", beta=KAISER_BETA,
    )


@pytest.mark.parametrize("orig,new", RATE_PAIRS)
def test_kernels_and_outputs_equal_torchaudio_bit_for_bit(orig, new):
    reference = _reference(orig, new)
    ours = KaiserResampler(orig, new)
    assert ours.half_width == reference.width
    assert ours.kernel.dtype == reference.kernel.dtype == torch.float32
    assert torch.equal(ours.kernel, reference.kernel)
    generator = torch.Generator().manual_seed(orig * 7 + new)
    for shape in [(1,), (orig // 100 + 7,), (3, 2 * orig + 1), (2, 2, 4999)]:
        waveform = torch.randn(shape, generator=generator)
        expected = reference(waveform)
        got = ours(waveform)
        assert got.shape == expected.shape, shape
        assert torch.equal(got, expected), (shape, (got - expected).abs().max())


def test_lengths_round_as_torchaudio_does_where_float32_rounding_decides():
    """ceil(n * T / o) is taken of a float32 value: 160 * 11025328 / 441 = 4000119.0023 rounds
    to 4000119.0 in float32, so both give 4000119 samples where exact rounding gives one more."""
    reference = _reference(44100, 16000)
    ours = KaiserResampler(44100, 16000)
    for length in (1, 440, 441, 882_001, 11_025_328):
        waveform = torch.zeros(length)
        assert ours(waveform).shape == reference(waveform).shape, length
    assert ours(torch.zeros(11_025_328)).shape == (4_000_119,)


def test_resample_keeps_same_rate_input_and_caches_each_rate_pair():
    waveform = torch.randn(1000)
    assert resample(waveform, 16000, 16000) is waveform
    first = resample(waveform, 48000, 16000)
    assert torch.equal(first, resample(waveform, 48000, 16000))
    assert first.shape == (334,)


@pytest.mark.parametrize("orig,new", [(0, 16000), (16000, -1), (44100.5, 16000)])
def test_invalid_rates_are_refused(orig, new):
    with pytest.raises(ValueError, match="positive integer rates"):
        KaiserResampler(orig, new)


def test_integer_waveforms_are_refused():
    with pytest.raises(TypeError, match="floating-point waveform"):
        KaiserResampler(48000, 16000)(torch.zeros(100, dtype=torch.int16))
