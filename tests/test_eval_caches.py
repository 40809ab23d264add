"""av-benchmark caches: the eval_public fixture's metrics, and the cache format round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mmgin.eval import cache
from mmgin.eval.benchmark import ALL_METRICS, evaluate_caches

EVAL_PUBLIC = Path(__file__).resolve().parent / "fixtures" / "eval_public"
EXPECTED = json.loads((EVAL_PUBLIC / "expected_metrics.json").read_text())


@pytest.fixture(scope="module")
def fixture_results():
    return {
        case: evaluate_caches(EVAL_PUBLIC / "gt", EVAL_PUBLIC / "pred",
                              is_paired=EXPECTED["cases"][case]["options"]["is_paired"])
        for case in ("paired", "unpaired")
    }


@pytest.mark.parametrize("case", ["paired", "unpaired"])
def test_eval_public_caches_give_av_benchmark_metrics(fixture_results, case):
    result = fixture_results[case]
    expected = EXPECTED["cases"][case]["metrics"]
    assert set(result.metrics) == set(expected)
    for name, want in expected.items():
        tol = EXPECTED["tolerances"]["per_metric"][name]
        got = result.metrics[name]
        assert abs(got - want) <= tol["atol"] + tol["rtol"] * abs(want), (name, got, want)
    # Every metric not computed is listed with a reason, never as a number.
    assert set(result.metrics) | set(result.unavailable) == set(ALL_METRICS)
    assert "synchformer_video.pth" in result.unavailable["DeSync"] or not EXPECTED["cases"][case]["options"]["is_paired"]


def test_skips_and_missing_files_are_reported_as_unavailable(tmp_path):
    gt = tmp_path / "gt"
    shutil.copytree(EVAL_PUBLIC / "gt", gt)
    (gt / cache.CLAP_MS_TEXT).unlink()
    result = evaluate_caches(gt, EVAL_PUBLIC / "pred", skip_video_related=True)
    assert "skip_video_related" in result.unavailable["IB-Score"]
    assert "skip_video_related" in result.unavailable["DeSync"]
    assert "LAION-CLAP-Score" in result.metrics
    assert str(gt / cache.CLAP_MS_TEXT) in result.unavailable["MS-CLAP-Score"]
    assert "extract_text.py" in result.unavailable["MS-CLAP-Score"]

    empty_pred = tmp_path / "pred"
    empty_pred.mkdir()
    nothing = evaluate_caches(gt, empty_pred)
    assert nothing.metrics == {}
    assert set(nothing.unavailable) == set(ALL_METRICS)
    assert "pann_features.pth" in nothing.unavailable["FD-PANN"]


def test_cache_round_trips_in_av_benchmark_format(tmp_path):
    """Entries written as views of batch tensors (as extract.py does) come back compact, in order."""
    names = ["zeta", "alpha", "000000014_zxpo56cpUBU_000007-0"]
    passt = torch.randn(3, 1295)
    pann_logits, pann_emb = torch.randn(3, 527), torch.relu(torch.randn(3, 2048))
    files = {
        cache.PASST_LOGITS: {n: passt[i, :527] for i, n in enumerate(names)},
        cache.PASST_EMBED: {n: passt[i, 527:] for i, n in enumerate(names)},
        cache.PANN: {n: {"logits": pann_logits[i], "2048": pann_emb[i],
                         "clipwise_output": torch.sigmoid(pann_logits[i])} for i, n in enumerate(names)},
        cache.VGGISH: {n: torch.randn(8 - i, 128) for i, n in enumerate(names)},
        cache.SYNCHFORMER_AUDIO: {n: torch.randn(24, 8, 768) for n in names[:1]},
    }
    for name, entries in files.items():
        cache.write_cache(tmp_path / name, entries)
        raw = torch.load(tmp_path / name, weights_only=True)  # what av-benchmark does
        assert type(raw) is dict and list(raw) == names[: len(entries)]
        back = cache.read_cache(tmp_path / name)
        for key, value in entries.items():
            if isinstance(value, dict):
                assert list(back[key]) == list(value)
                for field in value:
                    assert torch.equal(back[key][field], value[field])
            else:
                assert torch.equal(back[key], value) and back[key].dtype == torch.float32
    # Compact: each entry owns its storage instead of pickling the whole 1295-wide batch.
    assert (tmp_path / cache.PASST_LOGITS).stat().st_size < passt.numel() * 4
    reread = evaluate_caches(tmp_path, tmp_path, is_paired=True)
    assert reread.metrics["FD-VGG"] == pytest.approx(0.0, abs=1e-8)
    assert reread.metrics["KL-PASST-softmax"] == pytest.approx(0.0, abs=1e-7)


def test_cache_format_errors_name_the_file_entry_and_expected_shape(tmp_path):
    with pytest.raises(cache.CacheFormatError, match=r"'a' has shape \(512,\), expected \[768\]"):
        cache.write_cache(tmp_path / cache.PASST_EMBED, {"a": torch.zeros(512)})
    with pytest.raises(cache.CacheFormatError, match="'logits' and '2048'"):
        cache.write_cache(tmp_path / cache.PANN, {"a": torch.zeros(527)})
    with pytest.raises(cache.CacheFormatError, match="unknown cache file"):
        cache.write_cache(tmp_path / "clip.pth", {"a": torch.zeros(1)})
    torch.save([1, 2], tmp_path / cache.VGGISH)
    with pytest.raises(cache.CacheFormatError, match="expected a dict"):
        cache.read_cache(tmp_path / cache.VGGISH)
    assert not (tmp_path / cache.PASST_EMBED).exists()
