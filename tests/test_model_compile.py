"""The training step compiles as one graph, equals eager, and the benchmark script runs on CPU.

The step is the trainer's FlowLoss (posterior sample, CFG dropout by torch.where, network,
loss) compiled inside DDP, as the GPU benchmark and multi-GPU training run it. It compiles with
the aot_eager backend: fullgraph=True proves there is no graph break in the network or the loss,
and AOTAutograd traces the backward; Inductor's C++ code generation would take minutes on two
cores and is exercised by the GPU benchmark instead.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Iterator

import gin
import pytest
import torch
import torch.distributed as dist
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch.nn.parallel import DistributedDataParallel

from mmgin.model import FlowMatching, get_network
from mmgin.model.flops import training_flops_per_sample
from mmgin.train.loss import FlowLoss, draw_noise, loss_inputs
from mmgin.train.trainer import wrap_ddp

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_step.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _single_rank_ddp(bench: ModuleType) -> Iterator[None]:
    """A one-rank gloo group and a fresh dynamo cache, both gone afterwards."""
    torch._dynamo.reset()
    bench.init_single_rank_group(torch.device("cpu"))
    try:
        yield
    finally:
        dist.destroy_process_group()
        torch._dynamo.reset()


def _loss_and_grads(model: torch.nn.Module, params: list[torch.nn.Parameter], data: dict):
    for p in params:
        p.grad = None
    # The same posterior noise, t, x0 and dropout in every run; 0.5 drops some rows.
    noise = draw_noise(data["a_mean"], FlowMatching(), torch.Generator().manual_seed(3), 0.5, False)
    loss = model(**loss_inputs(data, noise)).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


def test_compiled_training_step_equals_eager(bench: ModuleType) -> None:
    network = get_network("tiny_16k").train()
    bench.recipe_like_init_(network, torch.Generator().manual_seed(0))
    params = [p for p in network.parameters() if p.requires_grad]
    step = FlowLoss(network, FlowMatching())
    data = bench.synthetic_batch(network, 4, torch.device("cpu"))
    eager_loss, eager_grads = _loss_and_grads(step, params, data)

    with _single_rank_ddp(bench):
        compiled = DistributedDataParallel(torch.compile(step, fullgraph=True, backend="aot_eager"))
        loss, grads = _loss_and_grads(compiled, params, data)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for grad, eager_grad in zip(grads, eager_grads):
        torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-7)
    names = [n for n, p in network.named_parameters() if p.requires_grad]
    # Zero gradients only where the reference has them too: the empty features when no sample
    # is dropped, and the query norms of the last (pre-only) joint block, whose clip and text
    # queries feed outputs that are discarded.
    no_grad = {n for n, g in zip(names, grads) if not g.any()}
    last = f"joint_blocks.{len(network.joint_blocks) - 1}"
    assert no_grad - {"empty_clip_feat", "empty_sync_feat"} == {
        f"{last}.clip_block.attn.q_norm.weight",
        f"{last}.text_block.attn.q_norm.weight",
    }


@pytest.mark.parametrize("mode", [True, "selective"])
def test_activation_checkpointing_gives_the_same_gradients(bench: ModuleType, mode: bool | str) -> None:
    plain = get_network("tiny_16k").train()
    bench.recipe_like_init_(plain, torch.Generator().manual_seed(0))
    checkpointed = get_network("tiny_16k", activation_checkpointing=mode).train()
    checkpointed.load_state_dict(plain.state_dict())
    data = bench.synthetic_batch(plain, 1, torch.device("cpu"))
    results = []
    for network in (plain, checkpointed):
        params = [p for p in network.parameters() if p.requires_grad]
        results.append(_loss_and_grads(FlowLoss(network, FlowMatching()), params, data))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for grad, reference in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(grad, reference, rtol=1e-6, atol=1e-9)


def test_benchmark_script_runs_on_cpu(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--variant", "tiny_16k", "--batch", "1", "--steps", "1",
            "--warmup", "1", "--no-compile", "--activation-checkpointing", "--out", str(out)]
    results = bench.main(argv)
    assert json.loads(out.read_text()) == results
    (result,) = results
    assert result["variant"] == "tiny_16k" and result["batch"] == 1 and result["precision"] == "fp32"
    assert result["activation_checkpointing"] == "full" and result["compile"] is False
    assert result["samples_per_s"] > 0 and result["mfu"] is None  # no known peak on a CPU
    network = get_network("tiny_16k")
    expected_tflops = training_flops_per_sample(network) / 1e12
    assert result["train_tflops_per_sample"] == pytest.approx(expected_tflops)
    assert 0 < result["final_loss"] < 100
    assert not dist.is_initialized()


def test_benchmark_batch_sweep_compiles_once_under_ddp(bench: ModuleType) -> None:
    """--dynamic: one symbolic-batch compilation serves every batch of a sweep, through DDP's
    bucket-split graph (a float attribute made symbolic used to break AOTAutograd there)."""
    counters.clear()
    argv = ["--device", "cpu", "--variant", "tiny_16k", "--batch", "2", "3", "--steps", "1",
            "--warmup", "1", "--dynamic", "--compile_backend", "aot_eager"]
    results = bench.main(argv)
    assert [r["batch"] for r in results] == [2, 3] and all(r["dynamic"] for r in results)
    assert counters["stats"]["unique_graphs"] == 1, "the second batch recompiled"
    assert all(0 < r["final_loss"] < 100 for r in results)
    assert torch._dynamo.config.specialize_float is False, "the bench leaked its dynamo setting"


def _products(graph: torch.fx.GraphModule) -> collections.Counter:
    """Matrix products and attention calls of an AOT graph, by op name."""
    names = collections.Counter()
    for node in graph.graph.nodes:
        name = getattr(node.target, "__name__", "").split(".")[0]
        if node.op == "call_function" and (name in ("mm", "addmm", "bmm") or "attention" in name):
            names[name] += 1
    return names


def _compiled_products_under_ddp(bench: ModuleType, checkpointing: bool | str) -> tuple:
    """Products in the forward and backward graphs of the step compiled inside wrap_ddp, with
    buckets small enough that DDPOptimizer splits the tiny network's graph."""
    forward, backward, graphs = collections.Counter(), collections.Counter(), collections.Counter()

    def counting(into: collections.Counter, kind: str):
        def compiler(graph: torch.fx.GraphModule, _inputs):
            into.update(_products(graph))
            graphs[kind] += 1
            return make_boxed_func(graph.forward)
        return compiler

    backend = aot_autograd(
        fw_compiler=counting(forward, "forward"), bw_compiler=counting(backward, "backward"),
        partition_fn=min_cut_rematerialization_partition,
    )
    network = get_network("tiny_16k", activation_checkpointing=checkpointing).train()
    bench.recipe_like_init_(network, torch.Generator().manual_seed(0))
    data = bench.synthetic_batch(network, 2, torch.device("cpu"))
    with _single_rank_ddp(bench):
        step = torch.compile(FlowLoss(network, FlowMatching()), fullgraph=True, backend=backend)
        model = wrap_ddp(step, torch.device("cpu"), bucket_cap_mb=1)
        loss, _ = _loss_and_grads(model, [p for p in network.parameters() if p.requires_grad], data)
    assert graphs["forward"] > 1, "DDPOptimizer did not split the graph: nothing would be tested"
    return forward, backward, loss


def test_selective_checkpointing_keeps_its_policy_through_ddp_splits(bench: ModuleType) -> None:
    """Under DDP the compiled graph is split at bucket boundaries; the selective policy must
    survive it: products and attention are saved, so the backward holds no more products than
    without checkpointing (torch 2.11 alone lost the policy and recomputed them)."""
    plain_forward, plain_backward, plain_loss = _compiled_products_under_ddp(bench, False)
    forward, backward, loss = _compiled_products_under_ddp(bench, "selective")
    assert any("attention" in name for name in plain_forward)
    assert forward == plain_forward and backward == plain_backward
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=0)


def test_ddp_bucket_size_is_a_gin_setting(bench: ModuleType) -> None:
    """wrap_ddp.bucket_cap_mb reaches DDP (it sets where DDPOptimizer cuts a compiled step);
    unset, DDP keeps its own default and its small first bucket."""
    network = get_network("tiny_16k")
    with _single_rank_ddp(bench):
        assert wrap_ddp(network, torch.device("cpu")).bucket_bytes_cap_default
        gin.parse_config("wrap_ddp.bucket_cap_mb = 100")
        ddp = wrap_ddp(network, torch.device("cpu"))
    assert ddp.bucket_bytes_cap == 100 * 2**20 and not ddp.bucket_bytes_cap_default
