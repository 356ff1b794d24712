"""The strategy seam: FedAvgM's momentum state, which Flower keeps in undocumented attributes.

A resumed run continues FedAvgM's server momentum from its checkpoint; Flower
1.41 has no API to read or restore it, so it is read and written here, and
only here. ``PRIVATE_ATTRIBUTES`` lists what is touched; tests/test_flower_seams.py
checks it against the installed Flower.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

FEDAVGM = "flwr.serverapp.strategy.fedavgm"
PRIVATE_NAMES: list[tuple[str, str]] = []
PRIVATE_ATTRIBUTES = [(FEDAVGM, "FedAvgM", "current_arrays"), (FEDAVGM, "FedAvgM", "momentum_vector")]


def momentum_state(strategy: Any) -> dict[str, list[np.ndarray]]:
    """FedAvgM's momentum vector, as the checkpoint keeps it (empty before the first aggregation)."""
    momentum = strategy.momentum_vector
    return {"momentum": list(momentum)} if momentum is not None else {}


def restore_momentum_state(strategy: Any, arrays: ArrayRecord, state: dict[str, list[np.ndarray]]) -> None:
    """Continue FedAvgM from a checkpoint: the weights its momentum was applied to, and the momentum."""
    strategy.current_arrays = ArrayRecord({k: Array(v.numpy()) for k, v in arrays.items()})
    strategy.momentum_vector = [np.asarray(v) for v in state["momentum"]] if "momentum" in state else None
