"""Book-keeping's rule for convolutions whose output is small next to their kernel: ghost norms (Bu et al. 2023).

Sample i's weight gradient is G_i = g_i^T U_i, with U_i its unfolded input (L positions x p = C k k) and g_i its
output gradient (L x d); ||G_i||^2 = <U_i U_i^T, g_i g_i^T>, two L x L Gram matrices, without the d x p
per-sample gradient. That costs L^2 (p + d) per sample against L p d for the per-sample gradient, so it is taken
where L (p + d) < p d (the ResNet's late 6 x 6 stages); the clipped sum is then the layer's ordinary weight gradient
of the clipping-weighted output gradient (one batched convolution backward), never a per-sample tensor. Where the
per-sample gradients are one batched product (one input channel, a 1 x 1 kernel: clipping/convolution.py), as
cheap as that weight gradient, ghost norms pay only if their Grams cost less than the per-sample tensor's two
passes: L^2 (p + d) < 2 p d. The input Gram comes from a strided view of the input, not torch's im2col.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from client.privacy.clipping.convolution import few_patches, unfold_input
from client.privacy.clipping.grad_sums import add_to_grad

__all__ = ["ghost_conv2d", "ghost_pays"]


def ghost_pays(layer: nn.Conv2d, out_positions: int) -> bool:
    """Whether ghost norms are both exact here (zero padding given as numbers, one group, a trained weight) and
    cheaper than per-sample gradients: L (p + d) < p d, or L^2 (p + d) < 2 p d where those are one batched
    product."""
    if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return False
    if not layer.weight.requires_grad:
        return False
    p, d = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1], layer.out_channels
    if few_patches(layer):
        return out_positions ** 2 * (p + d) < 2 * p * d
    return out_positions * (p + d) < p * d


def _input_gram(layer: nn.Conv2d, a: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Each sample's U_i^T U_i (B, L, L), U_i its unfolded input. With stride 1 and no dilation, where the padded
    image has fewer pixels than the unfolded input has rows (P < L k k), from the Gram of the padded image's pixels
    (B, P, P) summed over the kernel's offsets: entry (l, l') is the sum over offsets o of pixel(l + o) . pixel(l' +
    o), the same sum in another order, without the unfolded copy."""
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    height, width = a.shape[2] + 2 * ph, a.shape[3] + 2 * pw
    if tuple(layer.stride) != (1, 1) or tuple(layer.dilation) != (1, 1) or height * width >= out_h * out_w * kh * kw:
        unfolded = unfold_input(layer, a)  # (B, p, L)
        return torch.bmm(unfolded.transpose(1, 2), unfolded)
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    pixels = a.flatten(2)  # (B, C, P)
    pairs = torch.bmm(pixels.transpose(1, 2), pixels).view(a.shape[0], height, width, height, width)
    gram = None
    for i in range(kh):
        for j in range(kw):
            block = pairs[:, i:i + out_h, j:j + out_w, i:i + out_h, j:j + out_w]
            gram = block.clone() if gram is None else gram.add_(block)
    return gram.reshape(a.shape[0], out_h * out_w, out_h * out_w)


def ghost_conv2d(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Callable]:
    """Squared per-sample norms over the layer's trained parameters and the setter of their clipped sums, for an
    ``nn.Conv2d`` that ``ghost_pays`` accepts: ``a`` (B, C, H, W) its input, ``g`` (B, d, H', W') its output's
    gradient."""
    if a.dtype != g.dtype:
        a = a.to(g.dtype)
    grads = g.flatten(2)  # (B, d, L)
    input_gram = _input_gram(layer, a, g.shape[2], g.shape[3])  # (B, L, L)
    grad_gram = torch.bmm(grads.transpose(1, 2), grads)
    sq = torch.linalg.vecdot(input_gram.flatten(1), grad_gram.flatten(1))
    bias = layer.bias is not None and layer.bias.requires_grad
    if bias:
        sq = sq + torch.linalg.vector_norm(grads.sum(2), dim=1).square()

    def clipped(coef: torch.Tensor) -> None:
        weighted = g * coef.to(g.dtype).view(-1, 1, 1, 1)
        _, weight_grad, _ = torch.ops.aten.convolution_backward(
            weighted, a, layer.weight.detach(), None, layer.stride, layer.padding, layer.dilation,
            False, [0, 0], 1, [False, True, False])
        add_to_grad(layer.weight, weight_grad)
        if bias:
            add_to_grad(layer.bias, weighted.sum(dim=(0, 2, 3)))

    return sq, clipped
