"""Book-keeping's per-layer rules: from a layer's input ``a`` and the gradient ``g`` of its output, each sample's
squared gradient norm over the layer's trained parameters, and a setter that writes their clipped sums.

Linear layers use ghost norms (||g_i a_i^T|| = ||g_i|| ||a_i||; Opacus's einsum for sequences) and one matrix
product for the clipped sum; convolutions and GroupNorm compute per-sample gradients (client/privacy/clipping/
convolution.py, the segment layers' rules) and sum them weighted by the clipping factors.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from opacus.grad_sample.linear import compute_linear_norm_sample
from torch import nn

from client.privacy.clipping.convolution import conv2d_grad_sample, segment_conv2d_grad_sample
from client.privacy.clipping.segment_rules import compute_segment_group_norm_grad_sample
from shared_models.models.segment_layers import SegmentConv2d, SegmentGroupNorm

Setter = Callable[[torch.Tensor], None]


def linear(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Setter]:
    weight = layer.weight.requires_grad
    bias = layer.bias is not None and layer.bias.requires_grad
    a = a.to(g.dtype)
    if g.dim() == 2:
        sq = g.square().sum(1)
        if weight:
            sq = sq * (a.square().sum(1) + 1.0) if bias else sq * a.square().sum(1)
    else:
        norms = compute_linear_norm_sample(layer, [a], g)
        sq = sum(n.square() for p, n in norms.items() if p.requires_grad)

    def clipped(coef: torch.Tensor) -> None:
        cg = (g * coef.view(-1, *([1] * (g.dim() - 1)))).reshape(-1, layer.out_features)
        if weight:
            layer.weight.grad = cg.t() @ a.reshape(-1, layer.in_features)
        if bias:
            layer.bias.grad = cg.sum(0)

    return sq, clipped


def group_norm_grad_sample(layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Per-sample gradients of a GroupNorm's affine parameters (B, channels)."""
    grads = {}
    if layer.weight is not None and layer.weight.requires_grad:
        normalized = F.group_norm(activations[0].to(backprops.dtype), layer.num_groups, eps=layer.eps)
        grads[layer.weight] = (normalized * backprops).flatten(2).sum(2)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = backprops.flatten(2).sum(2)
    return grads


def from_per_sample(grad_sample: Callable) -> Callable:
    """A rule from a per-sample gradient function (Opacus's signature): squared norms and c-weighted sums."""

    def rule(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Setter]:
        flat = {p: gs.reshape(gs.shape[0], -1) for p, gs in grad_sample(layer, [a], g).items() if p.requires_grad}
        sq = sum(f.square().sum(1) for f in flat.values())

        def clipped(coef: torch.Tensor) -> None:
            for p, f in flat.items():
                p.grad = (coef.to(f.dtype) @ f).view_as(p)

        return sq, clipped

    return rule


# Exact types: a subclass may compute something else from the same parameters.
RULES: dict[type, Callable] = {
    nn.Linear: linear,
    nn.Conv2d: from_per_sample(conv2d_grad_sample),
    nn.GroupNorm: from_per_sample(group_norm_grad_sample),
    SegmentConv2d: from_per_sample(segment_conv2d_grad_sample),
    SegmentGroupNorm: from_per_sample(compute_segment_group_norm_grad_sample),
}
