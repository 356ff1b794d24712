"""Per-sample gradients of GroupNorm's affine parameters from torch's own fused kernels, without a normalised copy.

B images of C channels in G groups are, for GroupNorm, one image of B*C channels in B*G groups: torch's
``native_group_norm`` on that view gives every (image, group)'s mean and 1/std, and its backward kernel's weight
and bias gradients, per channel of the one image, are each image's own (the same fused sums torch's backward
forms for the batch). Used for nn.GroupNorm and, summed over a sample's segments, SegmentGroupNorm.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["image_affine_grads"]


def image_affine_grads(layer: nn.GroupNorm, x: torch.Tensor, g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """{trained weight / bias: (images, C)}: each image's gradient of ``layer`` (its input ``x`` (images, C, ...),
    its output's gradient ``g``)."""
    images, channels = x.shape[:2]
    weight = layer.weight is not None and layer.weight.requires_grad
    bias = layer.bias is not None and layer.bias.requires_grad
    if images == 0:
        grads = {}
        if weight:
            grads[layer.weight] = x.new_zeros((0, channels))
        if bias:
            grads[layer.bias] = x.new_zeros((0, channels))
        return grads
    x = x.to(g.dtype).reshape(1, images * channels, -1)
    g = g.reshape(1, images * channels, -1)
    positions, groups = x.shape[2], images * layer.num_groups
    _, mean, rstd = torch.native_group_norm(x, None, None, 1, images * channels, positions, groups, layer.eps)
    _, weight_grad, bias_grad = torch.ops.aten.native_group_norm_backward(
        g, x, mean, rstd, None, 1, images * channels, positions, groups, [False, weight, bias])
    grads = {}
    if weight:
        grads[layer.weight] = weight_grad.view(images, channels)
    if bias:
        grads[layer.bias] = bias_grad.view(images, channels)
    return grads
