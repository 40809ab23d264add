"""Where evaluation results go: the text log, TensorBoard scalars and a metrics json file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Protocol

from absl import logging

from mmgin import io
from mmgin.eval.benchmark import EvaluationResult


class ScalarWriter(Protocol):
    """The part of torch.utils.tensorboard.SummaryWriter used here."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


def explain_missing_predictions(result: EvaluationResult, extraction_problem: str | None) -> None:
    """Adds why pred caches are absent to every reason that is about a missing pred cache file."""
    if extraction_problem is None:
        return
    for name, reason in result.unavailable.items():
        if "pred cache file" in reason:
            result.unavailable[name] = f"{reason}. Pred caches were not extracted: {extraction_problem}"


def publish(
    result: EvaluationResult,
    *,
    tag: str,
    iteration: int,
    writer: ScalarWriter | None,
    json_path: str | Path,
    extra: dict[str, Any] | None = None,
) -> None:
    """Logs `<tag>/<metric>` lines and scalars, and writes the json file atomically."""
    for name, value in result.metrics.items():
        logging.info("%s/%-16s: %.10f", tag, name, value)
        if writer is not None:
            writer.add_scalar(f"{tag}/{name}", value, iteration)
    for name, reason in result.unavailable.items():
        logging.info("%s/%s unavailable: %s", tag, name, reason)
    if writer is not None and hasattr(writer, "flush"):
        writer.flush()
    document = {"tag": tag, "iteration": iteration, **dataclasses.asdict(result), **(extra or {})}
    io.write_text(json_path, json.dumps(document, indent=2) + "\n")
