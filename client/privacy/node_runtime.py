"""Process settings a DP node applies once at start-up (``start_node_runtime``), never on import.

Opacus's hooks (the clipping fallback, client/privacy/private_step.py) get the grouped-convolution rules
(client/privacy/clipping/convolution.py) through Opacus's ``register_grad_sampler``.

glibc's malloc serves blocks over 128 KB from fresh pages and returns them on free, so a DP step's buffers of
per-sample gradients, whose sizes change with every Poisson batch, page-fault again each step; letting malloc keep
freed memory for reuse removes most of that cost (figures: simulations/benchmarks/dp_cost.py, docs/privacy.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from shared_models.quiet_warnings import install as quiet_known_warnings

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc keep freed blocks (up to 32 MB each) for the next allocation instead of returning them to the
    system; returns whether the setting took effect (glibc only; elsewhere a no-op). The cost: freed memory stays
    with the process (a higher peak RSS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def register_hook_rules() -> None:
    """Opacus's hooks compute convolutions' per-sample gradients with the grouped-convolution rules."""
    from opacus.grad_sample import register_grad_sampler
    from torch import nn

    from client.privacy.clipping.convolution import conv2d_grad_sample, segment_conv2d_grad_sample
    from client.privacy.clipping.segment_rules import compute_segment_group_norm_grad_sample
    from shared_models.models.segment_layers import SegmentConv2d, SegmentGroupNorm

    register_grad_sampler(nn.Conv2d)(conv2d_grad_sample)
    register_grad_sampler(SegmentConv2d)(segment_conv2d_grad_sample)
    register_grad_sampler(SegmentGroupNorm)(compute_segment_group_norm_grad_sample)


@functools.cache
def start_node_runtime() -> bool:
    """Once per process, before a node trains: the allocator setting above, the hooks' convolution rules and the
    known-harmless warning filters (shared_models/quiet_warnings.py). Returns whether the allocator setting took
    effect."""
    quiet_known_warnings()
    register_hook_rules()
    return keep_freed_memory_for_reuse()
