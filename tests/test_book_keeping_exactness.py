"""Book-keeping clipping's cheaper operations keep its results: the finiteness gate on the batch's summed norms
(client/privacy/clipping/book_keeping.py) and the convolution rules' patch forms (ghost_conv.py), each against an
independent float64 computation or torch's own im2col.

A batch whose squared norms are each finite but overflow float32 when summed must still clip every sample by its
own factor (the gate only sends it down the exact per-sample path); a sample with a NaN input beside it still
counts as zero.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from client.privacy.clipping.book_keeping import BookKeepingCapture, book_keeping_layers, clip_and_sum


def _linear_sums(x: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Book-keeping's clipped weight and bias sums of Linear(2, 1) with loss_i = out_i (its gradient is 1)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 1))
    capture = BookKeepingCapture(net, book_keeping_layers(net))
    loss = net(x).sum(1)
    clip_and_sum(capture, loss, clip)
    return net[0].weight.grad.clone(), net[0].bias.grad.clone()


def _expected(x: torch.Tensor, clip: float, zero: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample i's gradient (x_i, 1) clipped with Opacus's factor min(1, C / (norm + 1e-6)), in float64."""
    weight, bias = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for i, row in enumerate(x.double()):
        if i in zero:
            continue
        norm = float(torch.cat([row, torch.ones(1, dtype=torch.float64)]).norm())
        factor = min(1.0, clip / (norm + 1e-6))
        weight += factor * row
        bias += factor
    return weight, bias


def test_finite_norms_whose_sum_overflows_are_each_clipped_by_their_own_factor():
    x = torch.tensor([[1e19, 1e19], [1.2e19, 0.5e19], [0.3, -0.4]])  # squared norms 2e38, 1.7e38: sum > float32 max
    assert torch.isinf((x.double().square().sum(1) + 1).float().sum())
    weight, bias = _linear_sums(x, 0.5)
    expected_weight, expected_bias = _expected(x, 0.5)
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    torch.testing.assert_close(weight.double(), expected_weight, rtol=1e-5, atol=0)
    torch.testing.assert_close(bias.double(), expected_bias, rtol=1e-5, atol=0)


@pytest.mark.parametrize("clip", [1e-3, 0.7, 1e3])  # every sample clipped, some, none (factor exactly 1)
def test_a_nan_sample_counts_as_zero_and_the_others_keep_their_factors(clip):
    x = torch.tensor([[0.3, -0.4], [float("nan"), 1.0], [2.0, 1.5], [-0.1, 0.05]])
    weight, bias = _linear_sums(x, clip)
    expected_weight, expected_bias = _expected(x, clip, zero=(1,))
    torch.testing.assert_close(weight.double(), expected_weight, rtol=1e-6, atol=0)
    torch.testing.assert_close(bias.double(), expected_bias, rtol=1e-6, atol=0)


def _per_sample(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each sample's gradient of sum(layer(a_i) * g_i) over the trained parameters, from its own autograd call."""
    trained = [p for p in layer.parameters() if p.requires_grad]
    return [list(torch.autograd.grad((layer(a[i:i + 1]) * g[i:i + 1]).sum(), trained)) for i in range(len(a))]


LAYOUTS = {  # (in, out, kernel, kwargs, input size)
    "one channel, stride 2, asymmetric padding": (1, 5, 3, dict(stride=2, padding=(1, 0)), (9, 7)),
    "one channel, non-square kernel, no bias": (1, 4, (3, 2), dict(padding=1, bias=False), (6, 5)),
    "one channel, dilation 2": (1, 3, 3, dict(dilation=2, padding=2), (7, 7)),
    "1 x 1, stride 2, padding 1": (6, 8, 1, dict(stride=2, padding=1), (5, 6)),
    "1 x 1, frozen bias": (4, 3, 1, dict(), (3, 3)),
    "3 x 3 on a small image (the pixel Gram)": (6, 10, 3, dict(padding=1), (4, 4)),
    "non-square kernel on a small image (the pixel Gram)": (5, 7, (3, 2), dict(padding=(1, 0)), (3, 4)),
    "3 x 3, stride 2 (the unfolded Gram)": (6, 9, 3, dict(stride=2, padding=1), (6, 6)),
}


def _layer(case: str) -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    in_ch, out_ch, kernel, kwargs, size = LAYOUTS[case]
    layer = nn.Conv2d(in_ch, out_ch, kernel, **kwargs)
    if case == "1 x 1, frozen bias":
        layer.bias.requires_grad_(False)
    a = torch.randn(4, in_ch, *size)
    return layer, a, torch.randn_like(layer(a))


@pytest.mark.parametrize("case", LAYOUTS)
def test_the_strided_unfold_is_torchs_im2col(case):
    from client.privacy.clipping.convolution import unfold_input

    layer, a, _ = _layer(case)
    expected = nn.functional.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                                    stride=layer.stride)
    assert torch.equal(unfold_input(layer, a), expected)


@pytest.mark.parametrize("case", [c for c in LAYOUTS if "Gram" not in c])
def test_few_patch_convolutions_give_each_samples_own_gradient(case):
    from client.privacy.clipping.convolution import conv2d_grad_sample, few_patches

    layer, a, g = _layer(case)
    assert few_patches(layer)
    got = conv2d_grad_sample(layer, [a], g)
    trained = [p for p in layer.parameters() if p.requires_grad]
    assert list(got) == trained
    for i, grads in enumerate(_per_sample(layer, a, g)):
        for p, expected in zip(trained, grads):
            torch.testing.assert_close(got[p][i], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", LAYOUTS)
def test_ghost_norms_and_clipped_sums_match_each_samples_gradient(case):
    from client.privacy.clipping.ghost_conv import ghost_conv2d

    layer, a, g = _layer(case)
    sq, clipped = ghost_conv2d(layer, a, g)
    per_sample = _per_sample(layer, a, g)
    expected_sq = torch.stack([sum(t.double().square().sum() for t in grads) for grads in per_sample])
    torch.testing.assert_close(sq.double(), expected_sq, rtol=1e-5, atol=1e-6)
    coef = torch.rand(len(a))
    clipped(coef)
    trained = [p for p in layer.parameters() if p.requires_grad]
    for k, p in enumerate(trained):
        expected = sum(c * grads[k] for c, grads in zip(coef, per_sample))
        torch.testing.assert_close(p.grad, expected, rtol=1e-5, atol=1e-5)
