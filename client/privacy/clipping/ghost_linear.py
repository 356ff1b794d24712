"""Book-keeping's rule for ``nn.Linear``: ghost norms, and the clipped sum as one matrix product.

Sample i's weight gradient is g_i a_i^T (a_i its input row, g_i its output's gradient), so its squared norm is
||g_i||^2 ||a_i||^2, plus ||g_i||^2 for the bias: no per-sample gradient is formed. The clipped sums are
(c ⊙ G)^T A and (c ⊙ G)^T 1 for the clipping factors c, added into what ``.grad`` holds (grad_sums.py). Inputs
with a sequence dimension take Opacus's ghost norm (an einsum over the positions). Few, fused operations: a
head's DP step is short, and every call counts.
"""

from __future__ import annotations

from typing import Callable

import torch
from opacus.grad_sample.linear import compute_linear_norm_sample
from torch import nn

from client.privacy.clipping.grad_sums import add_product_to_grad, add_to_grad

__all__ = ["ghost_linear"]


def ghost_linear(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Callable]:
    """Squared per-sample norms over the layer's trained parameters and the setter of their clipped sums:
    ``a`` the layer's input (B, ..., in), ``g`` its output's gradient (B, ..., out)."""
    weight = layer.weight.requires_grad
    bias = layer.bias is not None and layer.bias.requires_grad
    if a.dtype != g.dtype:
        a = a.to(g.dtype)
    if g.dim() == 2:
        sq = torch.linalg.vecdot(g, g)  # ||g_i||^2 (a small (B, out) tensor)
        if weight:
            a_sq = torch.linalg.vector_norm(a, dim=1).square_()  # one read of the inputs, no squared copy
            sq = torch.addcmul(sq, sq, a_sq) if bias else sq.mul_(a_sq)

        def clipped(coef: torch.Tensor) -> None:
            weighted = g.t() * coef  # (out, B): column i is c_i g_i
            if weight:
                add_product_to_grad(layer.weight, weighted, a)
            if bias:
                add_to_grad(layer.bias, weighted.sum(1))

        return sq, clipped

    norms = compute_linear_norm_sample(layer, [a], g)
    sq = sum(n.square() for p, n in norms.items() if p.requires_grad)

    def clipped_sequence(coef: torch.Tensor) -> None:
        cg = (g * coef.view(-1, *([1] * (g.dim() - 1)))).reshape(-1, layer.out_features)
        if weight:
            add_product_to_grad(layer.weight, cg.t(), a.reshape(-1, layer.in_features))
        if bias:
            add_to_grad(layer.bias, cg.sum(0))

    return sq, clipped_sequence
