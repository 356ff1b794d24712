"""The strategy seam: FedAvgM's momentum state, which Flower keeps in undocumented attributes, and the reply
check every Flower aggregator starts from.

A resumed run continues FedAvgM's server momentum from its checkpoint; Flower
1.41 has no API to read or restore it, so it is read and written here, and
only here. FedEmo's trimmed mean (server/aggregation/strategy.py) repeats FedTrimmedAvg's ``aggregate_train``
with a faster mean, so it takes the replies Flower would aggregate from Flower's own check
(``valid_train_replies``). ``PRIVATE_ATTRIBUTES``, ``PRIVATE_CALLS`` and ``REPLICATED`` list what is touched;
tests/test_flower_seams.py checks them against the installed Flower.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

FEDAVGM = "flwr.serverapp.strategy.fedavgm"
FEDAVG = "flwr.serverapp.strategy.fedavg"
FEDTRIMMEDAVG = "flwr.serverapp.strategy.fedtrimmedavg"
PRIVATE_NAMES: list[tuple[str, str]] = []
PRIVATE_ATTRIBUTES = [(FEDAVGM, "FedAvgM", "current_arrays"), (FEDAVGM, "FedAvgM", "momentum_vector"),
                      (FEDAVG, "FedAvg", "weighted_by_key")]
PRIVATE_CALLS = [(FEDAVG, "FedAvg._check_and_log_replies", ["self", "replies", "is_train", "validate"])]
REPLICATED = [(FEDTRIMMEDAVG, "FedTrimmedAvg.aggregate_train", "90e9da72b804d87b")]


def momentum_state(strategy: Any) -> dict[str, list[np.ndarray]]:
    """FedAvgM's momentum vector, as the checkpoint keeps it (empty before the first aggregation)."""
    momentum = strategy.momentum_vector
    return {"momentum": list(momentum)} if momentum is not None else {}


def restore_momentum_state(strategy: Any, arrays: ArrayRecord, state: dict[str, list[np.ndarray]]) -> None:
    """Continue FedAvgM from a checkpoint: the weights its momentum was applied to, and the momentum."""
    strategy.current_arrays = ArrayRecord({k: Array(v.numpy()) for k, v in arrays.items()})
    strategy.momentum_vector = [np.asarray(v) for v in state["momentum"]] if "momentum" in state else None


def valid_train_replies(strategy: Any, replies: Iterable[Message]) -> list[Message]:
    """The training replies Flower's aggregators aggregate: those without an error that pass Flower's checks (the
    same record keys and one ArrayRecord each), the others logged, as ``FedAvg._check_and_log_replies`` does."""
    valid, _ = strategy._check_and_log_replies(replies, is_train=True)
    return valid


def train_metrics(strategy: Any, replies: list[Message]) -> MetricRecord | None:
    """The round's training metrics from the valid replies, as Flower's aggregators aggregate them (the strategy's
    ``train_metrics_aggr_fn``, weighted by its ``weighted_by_key``)."""
    return strategy.train_metrics_aggr_fn([msg.content for msg in replies], strategy.weighted_by_key)
