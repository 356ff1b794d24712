"""The coordinate-wise trimmed mean of a round's updates, from one sort instead of Flower's partition.

Flower's FedTrimmedAvg (``trim_mean``) partitions the stacked updates along the node axis, a strided
introselect per coordinate; numpy sorts each coordinate's values several times faster, as one contiguous row
(server/aggregation/coordinate_sort.py; a 50-node face_cnn round: docs/design_notes.md). Both keep the same
values per coordinate (the middle ``n - 2 * int(beta * n)``), so the mean is Flower's up to the order of a float
sum.
"""

from __future__ import annotations

import numpy as np

from server.aggregation.coordinate_sort import sort_by_coordinate

__all__ = ["trimmed_mean"]


def trimmed_mean(stacked: np.ndarray, beta: float) -> np.ndarray:
    """Mean along axis 0 of ``stacked`` (one row per node) without the ``int(beta * n)`` lowest and highest values
    of each coordinate, as ``flwr.serverapp.strategy.fedtrimmedavg.trim_mean`` computes it (NaN sorts last in
    both); ``beta`` in [0, 0.5)."""
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"the trimmed mean's cut fraction must be in [0, 0.5), not {beta}")
    n = stacked.shape[0]
    cut = int(beta * n)
    kept = sort_by_coordinate(stacked)[cut:n - cut] if cut else stacked
    return np.mean(kept, axis=0)
