"""Which aggregation ``aggregation = "auto"`` (the default) runs: robust from 5 nodes per round up.

A coordinate-wise trimmed mean (Flower's FedTrimmedAvg, ``robust-trim-beta`` 0.2) bounds how far one hostile
node that passes the screen can pull the model; below 5 nodes it would trim nothing, so FedAvg runs. "auto"
also stays FedAvg under client-level DP (accounted for FedAvg's clipped mean), SecAgg+ (only the sum is
seen) and ``server-momentum``; an explicit robust rule with one of these is refused at start.
"""

from __future__ import annotations

from shared_models.settings.run_settings import RunSettings

AUTO_ROBUST_FROM = 5  # nodes per round from which "auto" aggregates with a trimmed mean


def nodes_per_round(settings: RunSettings) -> int:
    """How many nodes Flower samples for a training round (``num-supernodes`` x ``fraction-train``)."""
    return max(int(settings.num_supernodes * settings.fraction_train), 1)


def chosen_aggregation(settings: RunSettings) -> tuple[str, str]:
    """(the aggregation the run uses, why) for the run's ``aggregation`` key."""
    if settings.aggregation != "auto":
        return settings.aggregation, "set by aggregation"
    if settings.central_dp != "off":
        return "fedavg", "auto: client-level central-dp accounts FedAvg's clipped mean only"
    if settings.secure_aggregation:
        return "fedavg", "auto: secure-aggregation shows only the sum of the updates"
    if settings.server_momentum > 0:
        return "fedavg", "auto: server-momentum is FedAvgM's"
    n = nodes_per_round(settings)
    if n >= AUTO_ROBUST_FROM:
        return "fedtrimmedavg", f"auto: {n} nodes per round (>= {AUTO_ROBUST_FROM}): a trimmed mean"
    return "fedavg", f"auto: {n} nodes per round (< {AUTO_ROBUST_FROM}: a trimmed mean would cut nothing)"


def aggregation_record(settings: RunSettings) -> dict[str, str]:
    """summary.json's ``aggregation``: what ran, and why (config.json keeps the key as set, e.g. "auto")."""
    used, why = chosen_aggregation(settings)
    return {"used": used, "why": why}
