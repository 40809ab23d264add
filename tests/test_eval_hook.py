"""EvaluationHook: caches → metrics → TensorBoard + metrics.json, without av-benchmark."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from mmgin.eval import embedders
from mmgin.eval.benchmark import ALL_METRICS
from mmgin.eval.hook import EvaluationHook

EVAL_PUBLIC = Path(__file__).resolve().parent / "fixtures" / "eval_public"
EXPECTED = json.loads((EVAL_PUBLIC / "expected_metrics.json").read_text())["cases"]["paired"]["metrics"]

needs_no_av_bench = pytest.mark.skipif(
    importlib.util.find_spec("av_bench") is not None, reason="av_bench is installed here"
)


def test_missing_gt_cache_stops_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="EvaluationHook.gt_cache=.*not a directory"):
        EvaluationHook(gt_cache=tmp_path / "nope")


@needs_no_av_bench
def test_unavailable_reason_names_the_package_and_how_to_install_it():
    reason = embedders.av_bench_unavailable_reason()
    assert "av_bench" in reason and "github.com/hkchengrex/av-benchmark" in reason
    with pytest.raises(embedders.EmbeddingModelsUnavailable, match="av_bench"):
        embedders.extract_audio_cache("a", "b")
    with pytest.raises(embedders.EmbeddingModelsUnavailable, match="av_bench"):
        embedders.load_sync_head()


@needs_no_av_bench
def test_hook_evaluates_existing_caches_logs_scalars_and_warns_once(tmp_path, caplog):
    audio_dir = tmp_path / "val" / "000019999"
    shutil.copytree(EVAL_PUBLIC / "pred", audio_dir / "cache")
    hook = EvaluationHook(gt_cache=EVAL_PUBLIC / "gt", tag="val")
    writer = SummaryWriter(tmp_path / "tb")
    with caplog.at_level(logging.WARNING):
        metrics = hook(audio_dir, 19999, writer)
        hook(audio_dir, 39999, None)
    writer.close()

    assert set(metrics) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert metrics[name] == pytest.approx(want, rel=1e-5)
    warnings = [r for r in caplog.records if "embedding-based metrics are unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "av_bench" in warnings[0].getMessage()

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["scalars"]) == {f"val/{name}" for name in EXPECTED}
    [fd] = events.Scalars("val/FD-VGG")
    assert fd.step == 19999 and fd.value == pytest.approx(EXPECTED["FD-VGG"], rel=1e-6)

    document = json.loads((audio_dir / "metrics.json").read_text())
    assert document["iteration"] == 39999 and document["tag"] == "val"
    assert set(document["metrics"]) | set(document["unavailable"]) == set(ALL_METRICS)
    assert "not importable" in document["unavailable"]["DeSync"]


@needs_no_av_bench
def test_hook_without_any_pred_cache_lists_every_metric_as_unavailable(tmp_path):
    audio_dir = tmp_path / "val-cache"
    audio_dir.mkdir()
    metrics = EvaluationHook(gt_cache=EVAL_PUBLIC / "gt")(audio_dir, 4999)
    assert metrics == {}
    document = json.loads((audio_dir / "metrics.json").read_text())
    assert document["metrics"] == {}
    for name in ALL_METRICS:
        assert "Pred caches were not extracted" in document["unavailable"][name], name
