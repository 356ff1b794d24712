"""Faster per-sample gradient rules for DP-SGD, registered through Opacus's own extension points.

Imported by ``client/privacy/dp_training.py`` so that every private model built there uses them.

Opacus's "hooks" mode (and ghost clipping's per-sample fallback) calls a rule per layer type with the
layer's inputs (activations) and the gradient of its output (backprops); each rule returns every
parameter's gradient *per sample*, which the DPOptimizer then clips jointly and sums. The rules here return
the same per-sample gradients as Opacus's (up to float rounding; tests/test_per_sample_grads.py compares
them with brute-force per-sample autograd), only computed more cheaply on CPU:

* Convolutions: Opacus unfolds the input (im2col, a copy 9x the input) and multiplies per sample. The
  per-sample weight gradient of a convolution is instead the weight gradient of one *grouped* convolution
  with one group per sample, which torch's native backward computes without the unfolded copy (about 2x
  faster for face_cnn's second and third convolutions, 2-4x for voice_crnn's segment convolutions).
* Memory: a DP step allocates several buffers of a batch's per-sample gradients and backprops (Opacus
  zero-fills a fresh one per parameter, 9 MB for face_cnn's 576 x 128 projection at batch 32). glibc
  hands buffers over 128 KB out as fresh pages and returns them on free, so every step paid the page
  faults again; ``keep_freed_memory_for_reuse`` keeps freed memory in the process instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

# Imported before registering: its own rules for the segment layers are registered on import, and the
# faster ones below must replace them (Opacus keeps the last rule registered for a type).
from shared_models.models.segment_layers import SegmentConv2d, compute_segment_conv_grad_sample

__all__ = ["conv2d_grad_sample", "keep_freed_memory_for_reuse", "segment_conv2d_grad_sample"]


_zero_weights: dict[tuple, torch.Tensor] = {}


def _shape_only_weight(rows: int, kernel_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero weight (rows, *kernel_shape) for the grouped convolution, of which only the shape matters for
    its weight gradient: one buffer per kernel shape, grown to the largest batch seen and sliced, instead of
    a new (rows x kernel) tensor written every step (2.4 MB for face_cnn's third convolution)."""
    key = (tuple(kernel_shape), dtype, device)
    buffer = _zero_weights.get(key)
    if buffer is None or buffer.shape[0] < rows:
        buffer = _zero_weights[key] = torch.zeros((rows, *kernel_shape), dtype=dtype, device=device)
    return buffer[:rows]


def _grouped_conv_weight_grad(layer: nn.Conv2d, x: torch.Tensor, grad_out: torch.Tensor, samples: int) -> torch.Tensor:
    """Per-sample weight gradients of ``layer`` (samples, *weight.shape) from the weight gradient of one
    convolution with ``samples`` groups.

    ``x`` (K, samples * C, H, W) and ``grad_out`` (K, samples * O, H', W') hold each sample's channels side
    by side; torch's backward sums the weight gradient over the K images of the batch dimension, so K is
    1 for plain images and the segments of each sample for the segment layers (whose per-sample gradient
    is the sum over segments). A padding mode other than zeros is applied to ``x`` first, as the layer's
    forward does.
    """
    padding = layer.padding
    if layer.padding_mode != "zeros":
        x, padding = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), (0, 0)
    grouped_weight = _shape_only_weight(samples * layer.out_channels, layer.weight.shape[1:], x.dtype, x.device)
    _, weight_grad, _ = torch.ops.aten.convolution_backward(
        grad_out, x, grouped_weight, None, layer.stride, padding, layer.dilation,
        False, [0, 0], samples, [False, True, False])
    return weight_grad.view(samples, *layer.weight.shape)


def _grouped_rule_covers(layer: nn.Conv2d) -> bool:
    """Whether the grouped rule covers ``layer``: ungrouped, numeric padding (any padding mode)."""
    return layer.groups == 1 and not isinstance(layer.padding, str)


@register_grad_sampler(nn.Conv2d)
def conv2d_grad_sample(layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor):
    """``nn.Conv2d`` per-sample gradients; a single input channel (im2col is then cheap) and layouts the
    grouped rule does not cover keep Opacus's rule (Opacus's ignores a padding mode other than zeros: the
    grouped rule takes every layer with numeric padding, so that it is exact there too)."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    if n == 0 or not _grouped_rule_covers(layer) or (layer.in_channels == 1 and layer.padding_mode == "zeros"):
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc's malloc keep freed blocks (up to 32 MB each) for the next allocation instead of returning
    them to the system; returns whether the setting took effect (glibc only; elsewhere a no-op).

    Why: by default glibc serves blocks over 128 KB (a threshold it raises as such blocks are freed) from
    fresh pages and returns them on free, and the first write to each page faults. A DP step allocates new
    blocks of up to 9 MB every step (per-sample gradients, Opacus's zero-filled copies of them, scaled
    backprops) and, with Poisson batch sizes, of ever-changing sizes, while the non-private twin's buffers
    mostly fit in memory glibc already holds. Measured with the conv rules above in place
    (simulations/benchmarks/dp_cost.py, shared 2-core machine): face_cnn hooks 1.99x -> 1.59x, voice_crnn
    1.56x -> 1.34x; page faults per face_cnn DP step from tens of thousands to a few hundred. The cost:
    freed memory stays with the process, and fragmentation raised voice_crnn's peak RSS under DP by about
    15% (about 1.3 -> 1.5 GB in the benchmark process, which also holds the non-private twin).
    Process-wide, once, on import (every private model is trained in a process that imports this module
    through client/privacy/dp_training.py); the non-private path measured no slower with it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


keep_freed_memory_for_reuse()
