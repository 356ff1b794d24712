"""Each coordinate's values across a round's updates, sorted: the one sort the trimmed mean and the screen's
median take.

numpy sorts the contiguous rows of a (coordinates, nodes) array several times faster than the strided columns
of the (nodes, coordinates) stack a round holds, so the stack is transposed, sorted and transposed back: the
same array as ``np.sort(stacked, axis=0)`` (figures in docs/design_notes.md).
"""

from __future__ import annotations

import numpy as np

__all__ = ["sort_by_coordinate"]


def sort_by_coordinate(stacked: np.ndarray) -> np.ndarray:
    """``np.sort(stacked, axis=0)``: each coordinate's values (one per node along axis 0) in ascending order,
    NaN last. Holds two copies of ``stacked`` at its peak, as ``np.sort`` holds one."""
    if stacked.ndim == 0 or stacked.size == 0:
        return np.sort(stacked, axis=0 if stacked.ndim else None)
    n = stacked.shape[0]
    lanes = np.ascontiguousarray(stacked.reshape(n, -1).T)  # one coordinate's n values per contiguous row
    lanes.sort(axis=1)
    return np.ascontiguousarray(lanes.T).reshape(stacked.shape)
