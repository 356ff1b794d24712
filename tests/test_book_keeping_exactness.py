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
