"""Per-sample weight gradients of convolutions as the weight gradient of one grouped convolution.

Opacus unfolds the input (im2col, a copy kernel-size times the input) and multiplies per sample; a grouped
convolution with one group per sample gives the same gradients from torch's native backward without that copy.
Where the patches are few (one input channel, or a 1 x 1 kernel) with zero padding, the per-sample gradients are one
batched product with the unfolded input instead, unfolded from a strided view (torch's im2col is several times
slower on these small images). Layouts neither form covers (grouped layers, string padding) keep Opacus's rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from client.privacy.clipping.segment_rules import compute_segment_conv_grad_sample
from shared_models.models.segment_layers import SegmentConv2d

__all__ = ["conv2d_grad_sample", "few_patches", "segment_conv2d_grad_sample", "unfold_input"]

_zero_weights: dict[tuple, torch.Tensor] = {}


def _shape_only_weight(rows: int, kernel_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero weight (rows, *kernel_shape) of which only the shape matters for the weight gradient: one buffer
    per kernel shape, grown to the largest batch seen and sliced, not a new tensor every step."""
    key = (tuple(kernel_shape), dtype, device)
    buffer = _zero_weights.get(key)
    if buffer is None or buffer.shape[0] < rows:
        buffer = _zero_weights[key] = torch.zeros((rows, *kernel_shape), dtype=dtype, device=device)
    return buffer[:rows]


def _grouped_conv_weight_grad(layer: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor, samples: int) -> torch.Tensor:
    """Per-sample weight gradients (samples, *weight.shape) from one convolution with ``samples`` groups.

    ``x`` (K, samples * C, H, W) and ``grad_out`` (K, samples * O, H', W') hold each sample's channels side by
    side; torch's backward sums over the K images of the batch dimension (1 for plain images, a sample's segments
    for SegmentConv2d). A padding mode other than zeros is applied to ``x`` first, as the layer's forward does.
    """
    padding = layer.padding
    if layer.padding_mode != "zeros":
        x, padding = F.pad(x, _pad_widths(layer.padding), mode=layer.padding_mode), (0, 0)
    grouped_weight = _shape_only_weight(samples * layer.out_channels, layer.weight.shape[1:], x.dtype, x.device)
    _, weight_grad, _ = torch.ops.aten.convolution_backward(
        grad_out, x, grouped_weight, None, layer.stride, padding, layer.dilation,
        False, [0, 0], samples, [False, True, False])
    return weight_grad.view(samples, *layer.weight.shape)


def _grouped_rule_covers(layer: nn.Conv2d) -> bool:
    return layer.groups == 1 and not isinstance(layer.padding, str)


def unfold_input(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """``F.unfold``'s (B, C k k, L) patches of ``a`` for ``layer`` (one group, zero padding given as numbers): a
    strided view of the padded input and one copy (``F.unfold`` itself where the kernel is dilated)."""
    if tuple(layer.dilation) != (1, 1):
        return F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    windows = a.unfold(2, kh, sh).unfold(3, kw, sw)  # (B, C, H', W', kh, kw), a view
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(a.shape[0], -1, windows.shape[2] * windows.shape[3])


def few_patches(layer: nn.Conv2d) -> bool:
    """One input channel or a 1 x 1 kernel, zero padding: the unfolded input is no larger than the input times k k
    with k k small, and one batched product beats the grouped convolution."""
    return (layer.padding_mode == "zeros" and _grouped_rule_covers(layer)
            and (layer.in_channels == 1 or tuple(layer.kernel_size) == (1, 1)))


def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """``nn.Conv2d`` per-sample gradients {param: (B, *param.shape)} (Opacus's grad-sampler signature)."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    if n == 0 or not _grouped_rule_covers(layer):
        return compute_conv_grad_sample(layer, activations, backprops)
    ret = {}
    if layer.weight.requires_grad and few_patches(layer):  # (B, C k k, L) x (B, L, O), transposed to (B, O, C k k)
        per_sample = torch.bmm(unfold_input(layer, x), backprops.flatten(2).transpose(1, 2))
        ret[layer.weight] = per_sample.transpose(1, 2).reshape(n, *layer.weight.shape)
    elif layer.weight.requires_grad:
        ret[layer.weight] = _grouped_conv_weight_grad(
            layer, x.reshape(1, n * layer.in_channels, *x.shape[2:]),
            backprops.reshape(1, n * layer.out_channels, *backprops.shape[2:]), n)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret


def segment_conv2d_grad_sample(layer: SegmentConv2d, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Per-sample gradients of a convolution shared by a sample's segments (N, S, C, H, W): the grouped
    convolution's batch dimension runs over the segments, so torch's backward sums them per sample."""
    if not _grouped_rule_covers(layer):
        return compute_segment_conv_grad_sample(layer, activations, backprops)
    x = activations[0].to(backprops.dtype)
    n, s = x.shape[:2]
    ret = {}
    if layer.weight.requires_grad:
        if n == 0:
            ret[layer.weight] = layer.weight.new_zeros((0, *layer.weight.shape))
        else:
            ret[layer.weight] = _grouped_conv_weight_grad(
                layer, x.transpose(0, 1).reshape(s, n * layer.in_channels, *x.shape[3:]),
                backprops.transpose(0, 1).reshape(s, n * layer.out_channels, *backprops.shape[3:]), n)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(1, 3, 4))
    return ret


def _pad_widths(padding: tuple[int, ...]) -> tuple[int, ...]:
    """F.pad's widths (last dimension first, each side) for a convolution's per-dimension ``padding``."""
    return tuple(width for size in reversed(padding) for width in (size, size))
