"""Per-sample gradient rules of the voice models' segment layers (shared_models/models/segment_layers.py).

A segment layer runs on (B*S) segment images; a sample's gradient is the sum over its S segments. The
book-keeping engine (layer_rules.py) and Opacus's hooks (registered by node_runtime.start_node_runtime)
both use these rules.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from client.privacy.clipping.group_norm import image_affine_grads
from shared_models.models.segment_layers import SegmentConv2d, SegmentGroupNorm


def compute_segment_conv_grad_sample(
    layer: SegmentConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample conv gradients: per-segment im2col gradients, summed over the sample's segments.

    The (N*S, O, C*kh*kw) per-segment product is small next to the im2col
    matrix; contracting segments inside one einsum instead would force a
    transposed copy of that matrix.
    """
    x = activations[0].to(backprops.dtype)
    n, s = x.shape[:2]
    ret = {}
    grads = backprops.flatten(0, 1).flatten(2)  # (N*S, O, L)
    if layer.weight.requires_grad:
        cols = F.unfold(
            x.flatten(0, 1), layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride
        )  # (N*S, C*kh*kw, L)
        per_segment = torch.bmm(grads, cols.transpose(1, 2))  # (N*S, O, C*kh*kw)
        ret[layer.weight] = per_segment.unflatten(0, (n, s)).sum(dim=1).reshape(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = grads.sum(dim=2).unflatten(0, (n, s)).sum(dim=1)
    return ret


def compute_segment_group_norm_grad_sample(
    layer: SegmentGroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample GroupNorm affine gradients: each segment image's (clipping/group_norm.py), summed over the
    sample's segments."""
    x = activations[0]
    n, s = x.shape[:2]
    return {p: grads.view(n, s, grads.shape[-1]).sum(dim=1)
            for p, grads in image_affine_grads(layer, x.flatten(0, 1), backprops.flatten(0, 1)).items()}
