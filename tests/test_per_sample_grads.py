"""The per-sample convolution rules (client/privacy/clipping/convolution.py) against brute force.

Each rule must return, for every sample, exactly the gradient plain autograd gives for that sample alone (the
segment rule: summed over the sample's segments), in every layout it accepts and in those it hands back to
Opacus's rule. Book-keeping uses them for its norms and clipped sums; the node's start-up registers them for
Opacus's hooks, whose DP step must then still clip like brute force (tests/clipping_reference.py).
"""

from __future__ import annotations

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from torch import nn

import clipping_reference as ref
from client.privacy.clipping.convolution import conv2d_grad_sample, segment_conv2d_grad_sample
from client.privacy.node_runtime import register_hook_rules
from shared_models.models.segment_layers import SegmentConv2d


def _brute_force_per_sample(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> dict:
    """Each sample's parameter gradients of sum(layer(x_i) * grad_out_i), one autograd pass per sample."""
    params = [p for p in layer.parameters() if p.requires_grad]
    per_sample = [torch.autograd.grad((layer(x[i:i + 1]) * grad_out[i:i + 1]).sum(), params) for i in range(len(x))]
    return {p: torch.stack([g[k] for g in per_sample]) if per_sample else p.new_zeros((0, *p.shape))
            for k, p in enumerate(params)}


def _assert_rule_matches_brute_force(rule, layer: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        grad_out = torch.randn_like(layer(x))
    got = rule(layer, [x], grad_out)
    expected = _brute_force_per_sample(layer, x, grad_out)
    assert set(got) == set(expected)
    for p, e in expected.items():
        assert got[p].shape == (len(x), *p.shape)
        torch.testing.assert_close(got[p], e, rtol=1e-4, atol=1e-5)


CONV_CASES = {  # (in, out, kernel, kwargs): the grouped rule's cases, then those handed back to Opacus's rule
    "face_cnn's second conv": (16, 32, 3, dict(padding=1, bias=False)),
    "bias, stride 2": (4, 6, 3, dict(padding=1, stride=2)),
    "non-square kernel, dilation, no padding": (3, 5, (3, 2), dict(dilation=(2, 1))),
    "asymmetric padding and stride": (2, 4, 3, dict(padding=(0, 2), stride=(1, 2))),
    "one input channel (Opacus's rule)": (1, 8, 3, dict(padding=1)),
    "grouped (Opacus's rule)": (4, 6, 3, dict(groups=2, padding=1)),
    "reflect padding": (3, 4, 3, dict(padding=1, padding_mode="reflect")),
    "one input channel, circular padding": (1, 4, 3, dict(padding=(1, 2), padding_mode="circular")),
}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("batch", [5, 1])
def test_conv2d_rule_is_each_samples_own_gradient(case, batch):
    torch.manual_seed(0)
    in_ch, out_ch, kernel, kwargs = CONV_CASES[case]
    layer = nn.Conv2d(in_ch, out_ch, kernel, **kwargs)
    _assert_rule_matches_brute_force(conv2d_grad_sample, layer, torch.randn(batch, in_ch, 11, 9))


def test_conv2d_rule_on_an_empty_batch_and_a_frozen_weight():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    got = conv2d_grad_sample(layer, [torch.randn(0, 3, 8, 8)], torch.randn(0, 4, 8, 8))
    assert not got[layer.weight].any()  # Opacus's rule for an empty batch: no gradient
    layer.weight.requires_grad_(False)
    _assert_rule_matches_brute_force(conv2d_grad_sample, layer, torch.randn(3, 3, 8, 8))


SEGMENT_CASES = {
    "voice_crnn's second conv": (8, 16, dict(padding=1, bias=False)),
    "one input channel": (1, 8, dict(padding=1, bias=False)),
    "bias, stride 2": (3, 5, dict(padding=1, stride=2)),
    "reflect padding": (3, 4, dict(padding=1, padding_mode="reflect")),
}


@pytest.mark.parametrize("case", SEGMENT_CASES)
@pytest.mark.parametrize("batch", [4, 1, 0])
def test_segment_conv_rule_is_each_samples_gradient_summed_over_its_segments(case, batch):
    torch.manual_seed(0)
    in_ch, out_ch, kwargs = SEGMENT_CASES[case]
    layer = SegmentConv2d(in_ch, out_ch, 3, **kwargs)
    _assert_rule_matches_brute_force(segment_conv2d_grad_sample, layer, torch.randn(batch, 3, in_ch, 16, 8))


def test_opacus_hooks_with_the_rules_give_brute_force_per_sample_gradients_of_a_conv_net():
    """End to end through Opacus's hooks with the rules registered: strided and plain convolutions with biases."""
    register_hook_rules()
    assert GradSampleHooks.GRAD_SAMPLERS[nn.Conv2d] is conv2d_grad_sample
    assert GradSampleHooks.GRAD_SAMPLERS[SegmentConv2d] is segment_conv2d_grad_sample
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    x, y = torch.randn(6, 2, 10, 10), torch.randint(0, 3, (6,))
    expected = [torch.stack(g) for g in zip(*(
        torch.autograd.grad(nn.functional.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), list(net.parameters()))
        for i in range(len(x))))]
    hooked = GradSampleModule(net, loss_reduction="sum")
    nn.functional.cross_entropy(hooked(x), y, reduction="sum").backward()
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad_sample, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["face_cnn", pytest.param("voice_crnn", marks=pytest.mark.slow)])
def test_hooks_dp_step_with_the_rules_clips_each_sample_jointly_like_brute_force(name):
    """The whole DP step on Opacus's hooks with the rules registered, on Poisson-like batches (one empty)."""
    register_hook_rules()
    data = ref.dataset(name, 13)
    ref.check_steps(ref.model(name), data, ref.batches(data), ref.n_inputs(name), clipping="hooks")
