"""Poisson sampling for DP-SGD with several steps' masks drawn at once.

Opacus's ``UniformWithReplacementSampler`` takes each record into each step independently with probability q,
drawing one step's mask per step (a uniform per record, a comparison, ``nonzero``, a list): five calls for a step
that, for a small model on cached features, is otherwise a few operations. This sampler draws the uniforms of up
to ``_MAX_UNIFORMS`` / records steps in one call from the same secret generator, in the same order (row-major, so
the masks are Opacus's exactly), and hands each step its indices. Same mechanism, same entropy, same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

__all__ = ["BlockPoissonSampler"]

_MAX_UNIFORMS = 1 << 20  # uniforms drawn per call: 4 MB of float32 at most, whatever the node's size


class BlockPoissonSampler(UniformWithReplacementSampler):
    """Opacus's Poisson sampler (same arguments, length and batches from the same generator state), its masks
    drawn a block of steps at a time."""

    def __iter__(self) -> Iterator[list[int]]:
        remaining = self.steps
        block = max(1, min(remaining, _MAX_UNIFORMS // self.num_samples))
        while remaining > 0:
            steps = min(block, remaining)
            taken = torch.rand(steps, self.num_samples, generator=self.generator) < self.sample_rate
            rows, records = taken.nonzero(as_tuple=True)
            counts = torch.bincount(rows, minlength=steps).tolist()
            records, start = records.tolist(), 0
            for count in counts:
                yield records[start:start + count]
                start += count
            remaining -= steps
