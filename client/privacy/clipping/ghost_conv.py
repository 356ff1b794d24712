"""Book-keeping's rule for convolutions whose output is small next to their kernel: ghost norms (Bu et al. 2023).

Sample i's weight gradient is G_i = g_i^T U_i, with U_i its unfolded input (L positions x p = C k k) and g_i its
output gradient (L x d); ||G_i||^2 = <U_i U_i^T, g_i g_i^T>, two L x L Gram matrices, without the d x p
per-sample gradient. That costs L^2 (p + d) per sample against L p d for the per-sample gradient, so it is taken
where L (p + d) < p d (the ResNet's late 6 x 6 stages); the clipped sum is then the layer's ordinary weight gradient
of the clipping-weighted output gradient (one batched convolution backward), never a per-sample tensor.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ghost_conv2d", "ghost_pays"]


def ghost_pays(layer: nn.Conv2d, out_positions: int) -> bool:
    """Whether ghost norms are both exact here (zero padding given as numbers, one group, a trained weight) and
    cheaper than per-sample gradients: L (p + d) < p d."""
    if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return False
    if not layer.weight.requires_grad:
        return False
    p = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    return out_positions * (p + layer.out_channels) < p * layer.out_channels


def ghost_conv2d(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Callable]:
    """Squared per-sample norms over the layer's trained parameters and the setter of their clipped sums, for an
    ``nn.Conv2d`` that ``ghost_pays`` accepts: ``a`` (B, C, H, W) its input, ``g`` (B, d, H', W') its output's
    gradient."""
    a = a.to(g.dtype)
    unfolded = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                        stride=layer.stride)  # (B, p, L)
    grads = g.flatten(2)  # (B, d, L)
    input_gram = torch.bmm(unfolded.transpose(1, 2), unfolded)  # (B, L, L)
    grad_gram = torch.bmm(grads.transpose(1, 2), grads)
    sq = (input_gram * grad_gram).flatten(1).sum(1)
    bias = layer.bias is not None and layer.bias.requires_grad
    if bias:
        sq = sq + torch.linalg.vector_norm(grads.sum(2), dim=1).square()

    def clipped(coef: torch.Tensor) -> None:
        weighted = g * coef.to(g.dtype).view(-1, 1, 1, 1)
        _, weight_grad, _ = torch.ops.aten.convolution_backward(
            weighted, a, layer.weight.detach(), None, layer.stride, layer.padding, layer.dilation,
            False, [0, 0], 1, [False, True, False])
        layer.weight.grad = weight_grad
        if bias:
            layer.bias.grad = weighted.sum(dim=(0, 2, 3))

    return sq, clipped
