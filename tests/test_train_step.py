"""The training step's pieces: RNG draw order, CFG dropout, empty features, one compiled graph,
and the batch-size arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from mmgin.model import FlowMatching, get_network
from mmgin.train.batches import accumulation_steps
from mmgin.train.loss import FlowLoss, draw_noise, loss_inputs

B, L, C = 6, 250, 20


def tiny_network():
    torch.manual_seed(0)
    return get_network("tiny_16k", latent_mean=torch.zeros(C), latent_std=torch.ones(C),
                       empty_string_feat=torch.zeros(77, 1024))


def batch(video_exist=(True,) * B, text_exist=(True,) * B):
    g = torch.Generator().manual_seed(1)
    return {
        "a_mean": torch.randn(B, L, C, generator=g), "a_std": torch.rand(B, L, C, generator=g),
        "clip_features": torch.randn(B, 64, 1024, generator=g),
        "sync_features": torch.randn(B, 192, 768, generator=g),
        "text_features": torch.randn(B, 77, 1024, generator=g),
        "video_exist": torch.tensor(video_exist), "text_exist": torch.tensor(text_exist),
    }


@pytest.mark.parametrize("independent", [False, True])
def test_noise_is_drawn_in_the_reference_order(independent):
    flow = FlowMatching()
    noise = draw_noise(torch.zeros(B, L, C), flow, torch.Generator().manual_seed(5), 0.5, independent)
    g = torch.Generator().manual_seed(5)
    a_randn = torch.randn(B, L, C, generator=g)  # 1. posterior sample noise
    t = torch.sigmoid(torch.randn(B, generator=g))  # 2. logit-normal t
    x0 = torch.randn(B, L, C, generator=g)  # 3. flow noise
    u_video = torch.rand(B, generator=g)  # 4. video (v2: clip) dropout
    u_sync = torch.rand(B, generator=g) if independent else u_video  # v2: sync dropout
    u_text = torch.rand(B, generator=g)  # 5. text dropout
    assert torch.equal(noise.a_randn, a_randn) and torch.equal(noise.t, t) and torch.equal(noise.x0, x0)
    assert torch.equal(noise.drop_clip, u_video < 0.5)
    assert torch.equal(noise.drop_sync, u_sync < 0.5)
    assert torch.equal(noise.drop_text, u_text < 0.5)


def test_missing_and_dropped_modalities_use_the_empty_features():
    network = tiny_network()
    with torch.no_grad():  # the initialisation zeroes every gate; make all paths live
        for param in network.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    data = batch(video_exist=(True, False, True, True, False, True), text_exist=(True, True, False, True, True, True))
    noise = draw_noise(data["a_mean"], FlowMatching(), torch.Generator().manual_seed(0), 0.0, False)
    noise.drop_clip[3] = noise.drop_sync[3] = True  # CFG dropout of row 3's video
    noise.drop_text[5] = True
    loss = FlowLoss(network, FlowMatching())
    got = loss(**loss_inputs(data, noise))
    # the same with the substitutions made by hand
    manual = {k: v.clone() for k, v in data.items()}
    for row in (1, 3, 4):
        manual["clip_features"][row] = network.empty_clip_feat.detach()
        manual["sync_features"][row] = network.empty_sync_feat.detach()
    for row in (2, 5):
        manual["text_features"][row] = network.empty_string_feat.detach()
    manual["video_exist"][:] = True
    manual["text_exist"][:] = True
    noise.drop_clip[:] = noise.drop_sync[:] = noise.drop_text[:] = False
    expected = loss(**loss_inputs(manual, noise))
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert network.empty_clip_feat.grad.abs().sum() > 0  # learnable empties receive gradient
    assert network.empty_sync_feat.grad.abs().sum() > 0


def test_the_loss_is_one_graph_for_torch_compile():
    network = tiny_network()
    data = batch(video_exist=(True, False) * 3)
    noise = draw_noise(data["a_mean"], FlowMatching(), torch.Generator().manual_seed(0), 0.1, True)
    explanation = torch._dynamo.explain(FlowLoss(network, FlowMatching()))(**loss_inputs(data, noise))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_batch_arithmetic():
    assert accumulation_steps(512, None, 8) == (64, 1)
    assert accumulation_steps(512, 32, 8) == (32, 2)
    assert accumulation_steps(4, 2, 1) == (2, 2)
    with pytest.raises(ValueError, match="does not divide over 3 ranks"):
        accumulation_steps(512, None, 3)
    with pytest.raises(ValueError, match="does not divide the per-rank batch 64"):
        accumulation_steps(512, 48, 8)
