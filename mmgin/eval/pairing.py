"""Pairing predicted samples with ground truth by name, as av-benchmark does.

Generated files are often named after their source clip with a prefix or suffix (an iteration
number, a sample index). av-benchmark maps such pred names back to the clip name purely by the
name's length, using three VGGSound-shaped templates; any other length is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from absl import logging

# (template, the clip name inside it): a pred name of the template's length is cut at the
# position where the clip name sits in the template.
_NAME_TEMPLATES = (
    ("000000014_zxpo56cpUBU_000007-0", "zxpo56cpUBU_000007"),  # <iter>_<id>_<sec>-<k>
    ("zxpo56cpUBU_000007-0", "zxpo56cpUBU_000007"),  # <id>_<sec>-<k>
    ("Y---g-f_I2yQ_000001_0", "---g-f_I2yQ_000001"),  # Y<id>_<sec>_<k> (AudioSet style)
)


def clean_sample_name(name: str) -> str:
    """The clip name a generated sample's name refers to (av-benchmark's length rules)."""
    for template, clip in _NAME_TEMPLATES:
        if len(name) == len(template):
            start = template.index(clip)
            return name[start : start + len(clip)]
    return name


@dataclass
class Paired:
    """Aligned gt and pred values in pred order, plus the keys that found no partner."""

    gt: list[Any] = field(default_factory=list)
    pred: list[Any] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    pred_only: list[str] = field(default_factory=list)
    gt_only: list[str] = field(default_factory=list)


def pair_by_name(
    gt: Mapping[str, Any], pred: Mapping[str, Any], *, clean_names: bool = True, what: str = ""
) -> Paired:
    """Walks `pred` in its order; keeps entries whose (cleaned) name is a gt key.

    Unpaired keys on either side are logged and skipped. Several pred samples may map to one
    gt clip (each pairs with it). `clean_names=False` matches names exactly (av-benchmark's
    PANNs KL pairing).
    """
    paired = Paired()
    hit = set()
    for key, value in pred.items():
        name = clean_sample_name(key) if clean_names else key
        if name not in gt:
            paired.pred_only.append(key)
            continue
        hit.add(name)
        paired.gt.append(gt[name])
        paired.pred.append(value)
        paired.keys.append(name)
    paired.gt_only = [k for k in gt if k not in hit]
    if paired.pred_only or paired.gt_only:
        logging.info(
            "%s: %d paired; %d pred-only skipped %s; %d gt-only skipped %s",
            what or "pairing", len(paired.keys), len(paired.pred_only), _preview(paired.pred_only),
            len(paired.gt_only), _preview(paired.gt_only),
        )
    return paired


def _preview(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
