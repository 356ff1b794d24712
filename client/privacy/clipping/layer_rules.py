"""Book-keeping's per-layer rules: from a layer's input ``a`` and the gradient ``g`` of its output, each sample's
squared gradient norm over the layer's trained parameters, and a setter that writes their clipped sums.

Linear layers use ghost norms (||g_i a_i^T|| = ||g_i|| ||a_i||; Opacus's einsum for sequences) and one matrix
product for the clipped sum (ghost_linear.py); convolutions with a small output next to their kernel ghost norms too
(ghost_conv.py); other convolutions and GroupNorm compute per-sample gradients (convolution.py, the segment layers'
rules) and sum them weighted by the clipping factors.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from client.privacy.clipping.convolution import conv2d_grad_sample, segment_conv2d_grad_sample
from client.privacy.clipping.ghost_conv import ghost_conv2d, ghost_pays
from client.privacy.clipping.ghost_linear import ghost_linear
from client.privacy.clipping.grad_sums import add_to_grad
from client.privacy.clipping.group_norm import image_affine_grads
from client.privacy.clipping.segment_rules import compute_segment_group_norm_grad_sample
from shared_models.models.segment_layers import SegmentConv2d, SegmentGroupNorm

Setter = Callable[[torch.Tensor], None]


def _row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Each row's squared L2 norm, in one read of ``x`` (no squared copy of it); a fresh tensor."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def group_norm_grad_sample(layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Per-sample gradients of a GroupNorm's affine parameters (B, channels)."""
    return image_affine_grads(layer, activations[0], backprops)


def from_per_sample(grad_sample: Callable) -> Callable:
    """A rule from a per-sample gradient function (Opacus's signature): squared norms and c-weighted sums."""

    def rule(layer: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Setter]:
        flat = {p: gs.reshape(gs.shape[0], -1) for p, gs in grad_sample(layer, [a], g).items() if p.requires_grad}
        sq = sum(_row_sq_norms(f) for f in flat.values())

        def clipped(coef: torch.Tensor) -> None:
            for p, f in flat.items():
                add_to_grad(p, coef.to(f.dtype) @ f)

        return sq, clipped

    return rule


_conv2d_per_sample = from_per_sample(conv2d_grad_sample)


def conv2d(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, Setter]:
    """Ghost norms where they are cheaper (clipping/ghost_conv.py), else per-sample gradients."""
    if ghost_pays(layer, g.shape[2] * g.shape[3]):
        return ghost_conv2d(layer, a, g)
    return _conv2d_per_sample(layer, a, g)


# Exact types: a subclass may compute something else from the same parameters.
RULES: dict[type, Callable] = {
    nn.Linear: ghost_linear,
    nn.Conv2d: conv2d,
    nn.GroupNorm: from_per_sample(group_norm_grad_sample),
    SegmentConv2d: from_per_sample(segment_conv2d_grad_sample),
    SegmentGroupNorm: from_per_sample(compute_segment_group_norm_grad_sample),
}
