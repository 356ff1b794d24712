"""Fairness per demographic group, with uncertainty, from summed confusion counts.

Input is what ``metrics.jsonl`` holds per round under ``"groups"``: for every
demographic attribute and group, the 7x7 confusion matrix summed over the
evaluating hospitals (rows = true emotion, columns = predicted, order
``shared_models.taxonomy.EMOTIONS``). Counts are all there is, never
per-sample predictions, so every metric is computed from them:

- Point estimates come from Fairlearn's ``MetricFrame`` and scikit-learn on
  label arrays expanded from the counts (one row per counted sample), so the
  numbers are the libraries' own definitions, not formulas of ours.
- Fairlearn's rate metrics (true/false positive rate, selection rate) are
  binary only. For 7 emotions they are computed one-vs-rest per class
  (``y_true == k`` vs ``y_pred == k``); between-group differences are taken per
  class and the worst class is reported (:data:`MULTICLASS_METHOD`). A group
  with no samples of class k has no recall for k (``None``), and is left out of
  that class's recall comparison rather than counted as recall 0 (which is what
  Fairlearn's ``true_positive_rate`` returns for it).
- Intervals: a group's accuracy gets a Wilson score interval (scipy). Every
  other statistic gets a percentile bootstrap over the counts: each group's
  confusion matrix is redrawn from a multinomial with its observed size and
  cell frequencies (:data:`BOOTSTRAP_REPLICATES` draws, fixed seed
  :data:`BOOTSTRAP_SEED`, so a report is reproducible). Max-minus-min
  statistics (gaps, equalized odds) are biased upward under resampling; where
  the point estimate falls outside the percentile interval, the interval is
  extended to include it (conservative, never misleading).
- Groups with fewer than ``min_group_size`` samples are suppressed: no numbers
  (not even their size) and no part in gaps or the worst group.
- Differences between groups are *signed*, with an interval that can
  include 0 (:func:`difference_interval`: Newcombe's hybrid score interval,
  i.e. MOVER on the two groups' own accuracy intervals): each group minus the
  rest of the reported groups pooled, and the best minus the worst group. An
  interval of the absolute gap (max - min) can never include 0, so it would
  make every gap look real. One rule (``server.report.difference_rule.difference_verdict``) reads them
  all: an interval that lies beyond +-``gap_threshold`` is a difference above
  the threshold (the only thing that is flagged); else one wider than
  ``INCONCLUSIVE_WIDTH_FACTOR`` x the threshold is "too few to conclude" (it
  could neither show a gap above the threshold nor rule one out); else it is
  a difference (excludes 0) or no clear difference (includes 0). The other
  between-group figures (equalized odds, predicted rate) carry
  ``conclusive`` by the same width rule, so a 90 pp interval of a tiny group
  is called inconclusive, not shown as a finding.

Noised counts (``eval-dp-noise-multiplier``; the round's ``groups_dp``): the
summed cells are unbiased but noisy and may be negative. Then

- accuracy (and so the accuracy gap, ratio and worst group) is the ratio of
  the summed correct to the summed total counts, clipped into [0, 1]: a ratio
  of unbiased sums, never of cells clipped one by one. On exact counts this
  is scikit-learn's ``accuracy_score`` per group (tests check it);
- the per-class rates and macro-F1 come from Fairlearn on the counts with
  each cell clipped at 0 (display only; a rate needs non-negative counts);
  a group's ``confusion`` is shown clipped, its ``n`` is the unclipped sum;
- intervals include the count noise. Every summed cell carries independent
  noise of variance ``v`` (``groups_dp.cell_noise_variance``: the sum over
  noised nodes of sigma^2 + 1/12, see server/rounds/global_metrics.py). Accuracy:
  an Agresti-Coull interval whose variance is the sampling variance plus
  the noise's, by the delta method on p = C / N with C the 7 diagonal and
  N - C the 42 other cells: ``v (7 (1 - p)^2 + 42 p^2) / N^2``
  (:func:`accuracy_interval`). Every other statistic: the bootstrap above
  becomes parametric, each replicate's cells redrawn from the multinomial
  and then given fresh Gaussian noise of variance ``v``, the statistic taken
  as the point estimate is (accuracy from the sums, rates from clipped cells).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from scipy.stats import binomtest, norm
from sklearn.metrics import f1_score

from server.report.difference_rule import (INCONCLUSIVE_WIDTH_FACTOR, VERDICTS,  # noqa: F401 (re-exported)
                                           conclusive, difference_verdict)
from shared_models.demographic_groups import ATTRIBUTE_GROUPS
from shared_models.taxonomy import EMOTIONS, NUM_EMOTIONS

BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_SEED = 20240611
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


def difference_interval(a: np.ndarray, b: np.ndarray, confidence: float, variance_a: float = 0.0,
                        variance_b: float = 0.0) -> list[float] | None:
    """Interval of accuracy(a) - accuracy(b), signed, from each side's own accuracy interval.

    Newcombe's hybrid score interval (MOVER): ``d - sqrt((p_a - l_a)^2 + (u_b - p_b)^2)`` to
    ``d + sqrt((u_a - p_a)^2 + (p_b - l_b)^2)``; with exact counts the sides' Wilson intervals, with noised
    counts their noise-widened ones (``variance_*``: each side's per-cell noise variance). It treats the two
    sides as independent, as they are (disjoint test rows). None when a side has no interval.
    """
    ci_a, ci_b = accuracy_interval(a, confidence, variance_a), accuracy_interval(b, confidence, variance_b)
    if ci_a is None or ci_b is None:
        return None
    p_a, p_b = group_accuracy(a), group_accuracy(b)
    d = p_a - p_b
    return [float(d - math.hypot(p_a - ci_a[0], ci_b[1] - p_b)), float(d + math.hypot(ci_a[1] - p_a, p_b - ci_b[0]))]


def group_accuracy(confusion: np.ndarray) -> float:
    """Summed correct over summed total, clipped into [0, 1] (noised sums can stray out); exact counts:
    scikit-learn's ``accuracy_score`` on the expanded labels."""
    confusion = np.asarray(confusion)
    return float(np.clip(np.trace(confusion) / confusion.sum(), 0.0, 1.0))


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


# --------------------------------------------------------------------------- bootstrap over counts
def confusion_statistics(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """The same statistics, vectorised over replicates: ``confusions`` is (..., groups, 7, 7).

    Used only for bootstrap replicates (a MetricFrame per replicate would take
    minutes); tests check these equal the Fairlearn/sklearn point estimates.
    """
    c = np.asarray(confusions, dtype=np.float64)
    n = c.sum(axis=(-1, -2))
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    support = c.sum(axis=-1)
    predicted = c.sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(n > 0, np.clip(tp.sum(-1) / n, 0.0, 1.0), np.nan)  # noised replicates: see module
        present = (support + predicted) > 0
        f1 = np.where(present, 2 * tp / (support + predicted), 0.0)
        macro_f1 = f1.sum(-1) / present.sum(-1)
        tpr = np.where(support > 0, tp / support, np.nan)
        negatives = n[..., None] - support
        fpr = np.where(negatives > 0, (predicted - tp) / negatives, np.nan)
        sel = predicted / n[..., None]
        acc_max, acc_min = accuracy.max(-1), accuracy.min(-1)
        ratio = np.where(acc_max > 0, acc_min / acc_max, np.nan)
    eod = np.maximum(_nan_spread(tpr), _nan_spread(fpr)).max(-1)
    prd = (sel.max(-2) - sel.min(-2)).max(-1)
    return {"accuracy": accuracy, "macro_f1": macro_f1, "accuracy_gap": acc_max - acc_min, "accuracy_ratio": ratio,
            "equalized_odds_difference": eod, "predicted_rate_difference": prd}


def _nan_spread(rates: np.ndarray) -> np.ndarray:
    """max - min over groups (axis -2) ignoring undefined rates; 0 where fewer than two groups have one."""
    defined = ~np.isnan(rates)
    hi = np.where(defined, rates, -np.inf).max(-2)
    lo = np.where(defined, rates, np.inf).min(-2)
    return np.where(defined.sum(-2) > 1, hi - lo, 0.0)


def _bootstrap(kept: dict[str, np.ndarray], confidence: float, variance: float = 0.0) -> dict[str, Any]:
    """Replicates of every statistic: multinomial redraws of each group's counts, plus (noised counts)
    Gaussian noise of the released variance on every cell, each statistic taken as its point estimate is."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = []
    for confusion in kept.values():
        shown = np.clip(confusion, 0, None).ravel()
        draws.append(rng.multinomial(int(confusion.sum()), shown / shown.sum(), size=BOOTSTRAP_REPLICATES))
    replicates = np.stack(draws, axis=1).reshape(BOOTSTRAP_REPLICATES, len(kept), NUM_EMOTIONS, NUM_EMOTIONS)
    if variance > 0:
        replicates = replicates + rng.normal(0.0, math.sqrt(variance), replicates.shape)
    sums = confusion_statistics(replicates)  # accuracy and what derives from it: from the summed counts
    clipped = confusion_statistics(np.clip(replicates, 0, None)) if variance > 0 else sums  # rates: clipped cells
    names = list(kept)
    out: dict[str, Any] = {"macro_f1": {g: clipped["macro_f1"][:, i] for i, g in enumerate(names)}}
    for key in ("accuracy_gap", "accuracy_ratio"):
        out[key] = sums[key]
    for key in ("equalized_odds_difference", "predicted_rate_difference"):
        out[key] = clipped[key]
    return out


def _interval(samples: np.ndarray, point: float | None, confidence: float) -> list[float] | None:
    """Percentile interval of bootstrap replicates, extended to include the point estimate."""
    if point is None:
        return None
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return [point, point]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    return [float(min(lo, point)), float(max(hi, point))]


def accuracy_interval(confusion: np.ndarray, confidence: float, cell_noise_variance: float = 0.0
                      ) -> list[float] | None:
    """Interval of a group's accuracy from its summed 7x7 counts: Wilson for exact counts; with count noise of
    variance ``cell_noise_variance`` per summed cell, Agresti-Coull with the noise's variance added (delta
    method on correct / total; module docstring). None when the noised total is not positive."""
    confusion = np.asarray(confusion, dtype=np.float64).reshape(NUM_EMOTIONS, NUM_EMOTIONS)
    n, correct = float(confusion.sum()), float(np.trace(confusion))
    if cell_noise_variance <= 0:
        return wilson_interval(int(round(correct)), int(round(n)), confidence)
    if n <= 0:
        return None
    p = group_accuracy(confusion)
    z = float(norm.ppf(0.5 + confidence / 2))
    n_adj = n + z * z
    p_adj = (min(max(correct, 0.0), n) + z * z / 2) / n_adj
    diagonal, off = NUM_EMOTIONS, NUM_EMOTIONS * NUM_EMOTIONS - NUM_EMOTIONS
    noise = cell_noise_variance * (diagonal * (1 - p) ** 2 + off * p ** 2) / n ** 2
    half = z * math.sqrt(p_adj * (1 - p_adj) / n_adj + noise)
    return [float(max(0.0, min(p_adj - half, p))), float(min(1.0, max(p_adj + half, p)))]


def wilson_interval(successes: int, n: int, confidence: float) -> list[float]:
    """Wilson score interval of a proportion (scipy)."""
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def _float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
