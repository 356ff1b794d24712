"""Fairness per demographic group, with uncertainty, from the summed confusion counts of metrics.jsonl.

Counts are all there is (never per-sample predictions): point estimates come from Fairlearn's MetricFrame and
scikit-learn on labels expanded from the counts; intervals (Wilson, bootstrap over counts, Newcombe for signed
differences, widened for noised counts) come from ``server.report.fairness_intervals``; small groups are
suppressed; one rule (``difference_rule``) reads every signed difference. The method in full, with the
noised-count variances: docs/fairness_statistics.md.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import f1_score

from server.report.difference_rule import (INCONCLUSIVE_WIDTH_FACTOR, VERDICTS,  # noqa: F401 (re-exported)
                                           conclusive, difference_verdict)
from server.report.fairness_intervals import (BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED,  # noqa: F401 (re-exported)
                                              _bootstrap, _interval, accuracy_interval, confusion_statistics,
                                              difference_interval, group_accuracy, wilson_interval)
from shared_models.demographic_groups import ATTRIBUTE_GROUPS
from shared_models.taxonomy import EMOTIONS, NUM_EMOTIONS

MULTICLASS_METHOD = (
    "one-vs-rest: for each emotion k, Fairlearn's binary rate metrics on (y_true == k, y_pred == k) per group; "
    "between-group differences (max - min over groups with that class, Fairlearn's 'between_groups') per class, "
    "worst (largest) over the classes; groups without positives (negatives) of k are left out of k's "
    "true (false) positive rate comparison"
)
EQUALIZED_ODDS_METHOD = "max over classes k of max(TPR difference, FPR difference) between groups, one-vs-rest"
PREDICTED_RATE_METHOD = "max over classes k of the difference in P(y_pred == k) between groups (demographic parity, one-vs-rest)"


# --------------------------------------------------------------------------- public API
def fairness_view(groups: dict[str, dict[str, list[list[int]]]], *, min_group_size: int,
                  gap_threshold: float, confidence: float = 0.95, count_noise: dict | None = None) -> dict:
    """Per-attribute fairness report of one round's summed group confusion counts (JSON-serialisable).

    ``count_noise``: the round's ``groups_dp`` (metrics.jsonl) when the nodes noised their counts; the
    intervals then include the noise. Negative (noised) cells without it are refused.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    variance = count_noise_variance(count_noise)
    return {attribute: _attribute_view(attribute, by_group, min_group_size=min_group_size,
                                       gap_threshold=gap_threshold, confidence=confidence, variance=variance)
            for attribute, by_group in groups.items()}


def count_noise_variance(count_noise: dict | None) -> float:
    """Noise variance of every summed cell of a round, from its ``groups_dp``; 0 for exact counts.

    A record written before ``cell_noise_variance`` was logged (its nodes clipped cells at 0) gets the
    same formula from its noise multiplier and number of noised nodes.
    """
    if not count_noise:
        return 0.0
    if "cell_noise_variance" in count_noise:
        return float(count_noise["cell_noise_variance"])
    nodes = len(count_noise.get("epsilon_by_client") or {}) or 1
    sigma = float(count_noise["noise_multiplier"]) * float(count_noise.get("sensitivity", 1))
    return nodes * (sigma ** 2 + 1.0 / 12.0)


def fairness_history(rounds: list[dict], *, min_group_size: int, gap_threshold: float,
                     confidence: float = 0.95) -> list[dict]:
    """Accuracy gap, worst-group accuracy and each reported group's accuracy per attribute, for every round
    that has ``"groups"`` (suppressed groups left out, as in the view); flagged by the view's rule (the
    best-minus-worst difference interval lies above the threshold)."""
    history = []
    for entry in rounds:
        if not entry.get("groups"):
            continue
        row: dict[str, Any] = {"round": int(entry["round"])}
        variance = count_noise_variance(entry.get("groups_dp"))
        noised = variance > 0
        for attribute, by_group in entry["groups"].items():
            confusions = _confusions(attribute, by_group, noised)
            kept = [g for g, c in confusions.items() if not _suppressed(c, min_group_size)]
            if not kept:
                row[attribute] = {"accuracy_gap": None, "worst_group_accuracy": None, "flagged": False, "groups": {}}
                continue
            accuracy = {g: group_accuracy(confusions[g]) for g in kept}
            gap = max(accuracy.values()) - min(accuracy.values()) if len(kept) > 1 else None
            flagged = False
            if gap is not None:
                best, worst = max(kept, key=accuracy.get), min(kept, key=accuracy.get)
                ci = difference_interval(confusions[best], confusions[worst], confidence, variance, variance)
                flagged = difference_verdict(ci, gap_threshold) == "above_threshold"
            row[attribute] = {"accuracy_gap": gap, "worst_group_accuracy": min(accuracy.values()),
                              "flagged": flagged,
                              "groups": {g: {"n": int(confusions[g].sum()), "accuracy": accuracy[g]}
                                         for g in kept}}  # each reported group's accuracy this round
        history.append(row)
    return history


def expand_counts(confusions: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label arrays (y_true, y_pred, group) with one row per counted sample, for Fairlearn and sklearn."""
    true_idx, pred_idx = np.divmod(np.arange(NUM_EMOTIONS * NUM_EMOTIONS), NUM_EMOTIONS)
    y_true, y_pred, sensitive = [], [], []
    for group, confusion in confusions.items():
        reps = np.asarray(confusion, dtype=np.int64).ravel()
        y_true.append(np.repeat(true_idx, reps))
        y_pred.append(np.repeat(pred_idx, reps))
        sensitive.append(np.full(int(reps.sum()), group, dtype=object))
    if not y_true:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, object)
    return np.concatenate(y_true), np.concatenate(y_pred), np.concatenate(sensitive)


# --------------------------------------------------------------------------- one attribute
def _confusions(attribute: str, by_group: dict[str, Any], noised: bool = False) -> dict[str, np.ndarray]:
    """Group -> 7x7 counts, in the schema's order (age bands ascending, "unknown" last), others after.

    Negative cells are sums of noised counts: accepted only when the round says its counts were noised."""
    order = ATTRIBUTE_GROUPS.get(attribute, ())
    rank = {g: i for i, g in enumerate(order)}
    out = {}
    for group, counts in sorted(by_group.items(), key=lambda item: (rank.get(item[0], len(order)), item[0])):
        matrix = np.asarray(counts, dtype=np.int64)
        if matrix.size != NUM_EMOTIONS * NUM_EMOTIONS or (not noised and (matrix < 0).any()):
            raise ValueError(f"groups[{attribute!r}][{group!r}] must be a {NUM_EMOTIONS}x{NUM_EMOTIONS} matrix of "
                             f"non-negative counts (negative cells only with the round's count noise), "
                             f"got shape {matrix.shape}")
        out[str(group)] = matrix.reshape(NUM_EMOTIONS, NUM_EMOTIONS)
    return out


def _suppressed(confusion: np.ndarray, min_group_size: int) -> bool:
    return int(confusion.sum()) < max(int(min_group_size), 1)


def _attribute_view(attribute: str, by_group: dict, *, min_group_size: int, gap_threshold: float,
                    confidence: float, variance: float = 0.0) -> dict:
    confusions = _confusions(attribute, by_group, noised=variance > 0)
    kept = {g: c for g, c in confusions.items() if not _suppressed(c, min_group_size)}
    suppressed = [g for g in confusions if g not in kept]
    groups_out: dict[str, dict] = {g: {"n": None, "suppressed": True} for g in suppressed}
    view: dict[str, Any] = {"groups": groups_out, "suppressed_groups": suppressed,
                            "multiclass_method": MULTICLASS_METHOD}
    if not kept:
        view.update(_empty_between(), flagged=False, flag_reason=None)
        return view

    points = _point_estimates(kept)
    boot = _bootstrap(kept, confidence, variance)
    for g, confusion in kept.items():
        groups_out[g] = {
            "n": int(confusion.sum()), "suppressed": False,
            "accuracy": points["accuracy"][g], "accuracy_ci": accuracy_interval(confusion, confidence, variance),
            "macro_f1": points["macro_f1"][g],
            "macro_f1_ci": _interval(boot["macro_f1"][g], points["macro_f1"][g], confidence),
            "recall": points["recall"][g], "false_positive_rate": points["false_positive_rate"][g],
            "predicted_rate": points["predicted_rate"][g], "confusion": np.clip(confusion, 0, None).tolist(),
        }
    view["groups"] = {g: groups_out[g] for g in confusions}  # the schema's order, suppressed or not

    worst = min(kept, key=lambda g: points["accuracy"][g])
    view["worst_group"] = {"group": worst, "accuracy": points["accuracy"][worst],
                           "accuracy_ci": view["groups"][worst]["accuracy_ci"]}
    view["inconclusive_width"] = INCONCLUSIVE_WIDTH_FACTOR * gap_threshold
    if len(kept) < 2:
        view.update({k: v for k, v in _empty_between().items() if k != "worst_group"})
    else:
        best = max(kept, key=lambda g: points["accuracy"][g])
        for g, confusion in kept.items():  # each group against the rest of the reported groups, pooled
            others = [h for h in kept if h != g]
            rest = sum(kept[h] for h in others)
            ci = difference_interval(confusion, rest, confidence, variance, variance * len(others))
            groups_out[g]["difference_from_rest"] = {
                "value": points["accuracy"][g] - group_accuracy(rest), "ci": ci, "rest": others,
                "verdict": difference_verdict(ci, gap_threshold)}
        difference_ci = difference_interval(kept[best], kept[worst], confidence, variance, variance)
        view["accuracy_gap"] = {"value": points["accuracy_gap"], "between": [best, worst],
                                "ci": _interval(boot["accuracy_gap"], points["accuracy_gap"], confidence),
                                "difference_ci": difference_ci,
                                "verdict": difference_verdict(difference_ci, gap_threshold)}
        view["accuracy_ratio"] = {"value": points["accuracy_ratio"],
                                  "ci": _interval(boot["accuracy_ratio"], points["accuracy_ratio"], confidence)}
        for key, method in (("equalized_odds_difference", EQUALIZED_ODDS_METHOD),
                            ("predicted_rate_difference", PREDICTED_RATE_METHOD)):
            ci = _interval(boot[key], points[key], confidence)
            view[key] = {"value": points[key], "method": method, "ci": ci, "conclusive": conclusive(ci, gap_threshold)}
    gap = view["accuracy_gap"]
    view["flagged"] = gap.get("verdict") == "above_threshold"
    view["flag_reason"] = (f"accuracy gap {100 * gap['value']:.1f} pp between {gap['between'][0]} and "
                           f"{gap['between'][1]}: its {100 * confidence:g}% interval ({100 * gap['difference_ci'][0]:.1f} to "
                           f"{100 * gap['difference_ci'][1]:.1f} pp) lies above the threshold "
                           f"{100 * gap_threshold:.1f} pp" if view["flagged"] else None)
    return view


def _empty_between() -> dict:
    return {"worst_group": {"group": None, "accuracy": None, "accuracy_ci": None},
            "accuracy_gap": {"value": None, "ci": None, "between": [], "difference_ci": None, "verdict": None},
            "accuracy_ratio": {"value": None, "ci": None},
            "equalized_odds_difference": {"value": None, "ci": None, "method": EQUALIZED_ODDS_METHOD},
            "predicted_rate_difference": {"value": None, "ci": None, "method": PREDICTED_RATE_METHOD}}


# --------------------------------------------------------------------------- point estimates (Fairlearn/sklearn)
def _point_estimates(kept: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy from the summed counts (:func:`group_accuracy`); every other point estimate from MetricFrame
    on the label arrays expanded from the counts, each cell clipped at 0 (noised counts; exact: unchanged)."""
    accuracy = {g: group_accuracy(c) for g, c in kept.items()}
    kept = {g: np.clip(c, 0, None) for g, c in kept.items()}
    y_true, y_pred, sensitive = expand_counts(kept)
    frame = MetricFrame(metrics={"macro_f1": partial(f1_score, average="macro", zero_division=0)},
                        y_true=y_true, y_pred=y_pred, sensitive_features=sensitive)
    by_group = frame.by_group
    best, worst = max(accuracy.values()), min(accuracy.values())
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "macro_f1": {g: float(by_group.loc[g, "macro_f1"]) for g in kept},
        "accuracy_gap": best - worst,
        "accuracy_ratio": worst / best if best > 0 else None,
        "recall": {g: {} for g in kept}, "false_positive_rate": {g: {} for g in kept},
        "predicted_rate": {g: {} for g in kept},
    }
    worst_eod, worst_prd = 0.0, 0.0
    for k, emotion in enumerate(EMOTIONS):
        per_class = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "selection_rate": selection_rate},
            y_true=(y_true == k).astype(int), y_pred=(y_pred == k).astype(int), sensitive_features=sensitive)
        rates = per_class.by_group
        tprs, fprs = [], []
        for g, confusion in kept.items():
            positives = int(confusion[k].sum())
            negatives = int(confusion.sum()) - positives
            tpr = float(rates.loc[g, "tpr"]) if positives else None  # Fairlearn says 0 for "no positives"
            fpr = float(rates.loc[g, "fpr"]) if negatives else None
            out["recall"][g][emotion] = tpr
            out["false_positive_rate"][g][emotion] = fpr
            out["predicted_rate"][g][emotion] = float(rates.loc[g, "selection_rate"])
            tprs += [tpr] if tpr is not None else []
            fprs += [fpr] if fpr is not None else []
        eod = max(_spread(tprs), _spread(fprs))
        worst_eod = max(worst_eod, eod)
        worst_prd = max(worst_prd, _float(per_class.difference()["selection_rate"]))
    out["equalized_odds_difference"] = worst_eod
    out["predicted_rate_difference"] = worst_prd
    return out


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def _float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
