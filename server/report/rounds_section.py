"""The report's per-round figures: global metrics, the accuracy interval and who took part in each round."""

from __future__ import annotations

from typing import Any

import numpy as np

from server.report.fairness import accuracy_interval as group_accuracy_interval
from server.report.fairness import count_noise_variance
from shared_models.demographic_groups import ATTRIBUTE_GROUPS

CONFIDENCE = 0.95  # level of every interval in the report (Wilson for accuracies)
ROUND_METRICS = ("loss", "accuracy", "macro_f1", "uar", "ccc_valence", "ccc_arousal", "eval_examples")


def accuracy_interval(counts: list[list[float]], count_noise: dict[str, Any] | None = None,
                      confidence: float = CONFIDENCE) -> list[float] | None:
    """The global accuracy's interval from the round's summed confusion, as the fairness view computes a group's:
    Wilson for exact counts, with the count noise's variance added for noised ones; None without samples."""
    if sum(map(sum, counts)) <= 0:
        return None
    return group_accuracy_interval(np.asarray(counts, dtype=np.float64), confidence, overall_noise_variance(count_noise))


def overall_noise_variance(count_noise: dict[str, Any] | None) -> float:
    """Noise variance of one cell of the round's overall confusion: logged since the nodes average it over
    attributes; a record from before, whose overall confusion summed the first attribute's groups, gets
    that attribute's group count x a group cell's (the FER2013/CREMA-D/RAF-DB first attribute, sex, has 4)."""
    if not count_noise:
        return 0.0
    if "overall_cell_noise_variance" in count_noise:
        return float(count_noise["overall_cell_noise_variance"])
    return len(ATTRIBUTE_GROUPS["sex"]) * count_noise_variance(count_noise)


def round_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """One round's global metrics, with the accuracy interval and who took part."""
    out: dict[str, Any] = {"round": entry["round"]}
    out.update({k: entry[k] for k in ROUND_METRICS if k in entry})
    if entry.get("central_dp"):
        out["central_dp_epsilon"] = entry["central_dp"].get("epsilon")
    counts = entry.get("confusion", {}).get("counts")
    if counts is not None:  # noised counts (groups_dp): unclipped sums, the interval includes their noise
        out["accuracy_ci"] = accuracy_interval(counts, entry.get("groups_dp"))
        out["confusion"] = counts
    evaluate = entry.get("evaluate") or {}
    train = entry.get("train") or {}
    out["clients_evaluated"] = len(evaluate.get("clients", []))
    out["clients_trained"] = len(train.get("clients", []))
    out["evaluate_failures"] = evaluate.get("failures", [])
    out["train_failures"] = train.get("failures", [])
    out["train_rejected"] = train.get("rejected", [])  # updates the coordinator's screen refused (client, reason)
    if "elapsed_s" in entry:
        out["elapsed_s"] = entry["elapsed_s"]
    return out
