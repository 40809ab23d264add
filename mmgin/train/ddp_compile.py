"""Keeps selective activation checkpointing intact when DDP splits a compiled graph.

torch.compile under DDP hands the graph to DDPOptimizer, which splits it at gradient-bucket
boundaries. In torch 2.11 its ``propagate_metadata`` gives every top-level child of the split
graph the original graph's ``meta``, the checkpointed regions' bodies included; a body loses
the ``_checkpoint_context_fn`` that carries its policy and falls back to plain checkpointing
(everything recomputed, products and attention too). Upstream: pytorch/pytorch#178765, fixed
by #179496. Without the fix, 'selective' under DDP recomputes every block's products and
attention forward (bench/NOTES.md); single-process training never splits and was unaffected.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx
from torch._dynamo.backends import distributed as ddp_optimizer

_POLICY_KEY = "_checkpoint_context_fn"


def _keeping_checkpoint_policies(propagate: Callable[..., Any]) -> Callable[..., Any]:
    def propagate_metadata(orig_gm: fx.GraphModule, split_gm: fx.GraphModule) -> None:
        policies = {name: child.meta[_POLICY_KEY] for name, child in split_gm.named_children()
                    if _POLICY_KEY in getattr(child, "meta", {})}
        propagate(orig_gm, split_gm)
        for name, policy in policies.items():
            child = getattr(split_gm, name)
            child.meta = {**child.meta, _POLICY_KEY: policy}  # its own dict: meta is shared

    propagate_metadata.keeps_checkpoint_policies = True  # type: ignore[attr-defined]
    return propagate_metadata


def keep_checkpoint_policies_in_ddp_splits() -> None:
    """Installs the fix once per process (harmless where torch already keeps the policies)."""
    current = getattr(ddp_optimizer, "propagate_metadata", None)
    if current is None or getattr(current, "keeps_checkpoint_policies", False):
        return
    ddp_optimizer.propagate_metadata = _keeping_checkpoint_policies(current)
