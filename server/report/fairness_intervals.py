"""Intervals of the per-group fairness figures: Wilson (exact counts) or noise-widened Agresti-Coull for an
accuracy, Newcombe's hybrid score interval for a signed difference, and a percentile bootstrap over the
counts (parametric when the counts carry DP noise) for everything else. Method: docs/fairness_statistics.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm

from shared_models.taxonomy import NUM_EMOTIONS

BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_SEED = 20240611


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
