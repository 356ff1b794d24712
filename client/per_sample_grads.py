"""Faster per-sample gradient rules for DP-SGD, registered through Opacus's own extension points.

Imported by ``client/dp_training.py`` so that every private model built there uses them.

Opacus's "hooks" mode (and ghost clipping's per-sample fallback) calls a rule per layer type with the
layer's inputs (activations) and the gradient of its output (backprops); each rule returns every
parameter's gradient *per sample*, which the DPOptimizer then clips jointly and sums. The rules here return
exactly the same tensors as Opacus's (tests/test_per_sample_grads.py compares them with Opacus's rules and
with brute-force per-sample autograd), only computed more cheaply on CPU:

* Convolutions: Opacus unfolds the input (im2col, a copy 9x the input) and multiplies per sample. The
  per-sample weight gradient of a convolution is instead the weight gradient of one *grouped* convolution
  with one group per sample, which torch's native backward computes without the unfolded copy (about 2x
  faster for face_cnn's second and third convolutions, 2-4x for voice_crnn's segment convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

# Imported before registering: its own rules for the segment layers are registered on import, and the
# faster ones below must replace them (Opacus keeps the last rule registered for a type).
from shared_models.segment_layers import SegmentConv2d

__all__ = ["conv2d_grad_sample", "segment_conv2d_grad_sample"]


def _grouped_conv_weight_grad(layer: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor, samples: int) -> torch.Tensor:
    """Per-sample weight gradients of ``layer`` (samples, *weight.shape) from the weight gradient of one
    convolution with ``samples`` groups.

    ``x`` (K, samples * C, H, W) and ``grad_out`` (K, samples * O, H', W') hold each sample's channels side
    by side; torch's backward sums the weight gradient over the K images of the batch dimension, so K is
    1 for plain images and the segments of each sample for the segment layers (whose per-sample gradient
    is the sum over segments).
    """
    grouped_weight = layer.weight.detach().expand(samples, *layer.weight.shape).flatten(0, 1)  # only its shape is used
    _, weight_grad, _ = torch.ops.aten.convolution_backward(
        grad_out, x, grouped_weight, None, layer.stride, layer.padding, layer.dilation,
        False, [0, 0], samples, [False, True, False])
    return weight_grad.view(samples, *layer.weight.shape)


def _plain_conv2d(layer: nn.Module) -> bool:
    """Whether ``layer`` is a convolution the grouped rule covers: ungrouped, numeric padding, zero padding mode."""
    return layer.groups == 1 and not isinstance(layer.padding, str) and layer.padding_mode == "zeros"


@register_grad_sampler(nn.Conv2d)
def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor):
    """``nn.Conv2d`` per-sample gradients; a single input channel (im2col is then cheap) and layouts the
    grouped rule does not cover keep Opacus's rule."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    if n == 0 or layer.in_channels == 1 or not _plain_conv2d(layer):
        return compute_conv_grad_sample(layer, activations, backprops)
    ret = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = _grouped_conv_weight_grad(
            layer, x.reshape(1, n * layer.in_channels, *x.shape[2:]),
            backprops.reshape(1, n * layer.out_channels, *backprops.shape[2:]), n)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret


@register_grad_sampler(SegmentConv2d)
def segment_conv2d_grad_sample(layer: SegmentConv2d, activations: list[torch.Tensor], backprops: torch.Tensor):
    """Per-sample gradients of a convolution shared by a sample's segments, (N, S, C, H, W): the grouped
    convolution's batch dimension runs over the segments, so their sum per sample comes out of torch's
    backward directly."""
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
