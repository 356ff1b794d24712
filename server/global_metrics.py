"""Global metrics from counts that clients report (never from per-sample outputs).

Summing clients' confusion matrices and moment sums gives exactly the metric a
pooled test set would give, so federated evaluation needs no raw predictions.
"""

from __future__ import annotations

import numpy as np

from shared_models.taxonomy import NUM_EMOTIONS


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and unweighted average recall (UAR, the speech-emotion standard).

    Macro averages run over the classes present in the truth or the predictions,
    as scikit-learn's ``f1_score(average="macro")`` does, so absent classes
    (CREMA-D has no surprise) do not drag the score to zero.
    """
    confusion = np.asarray(confusion, dtype=np.float64).reshape(NUM_EMOTIONS, NUM_EMOTIONS)
    total = confusion.sum()
    if total == 0:
        return {"accuracy": float("nan"), "macro-f1": float("nan"), "uar": float("nan")}
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(tp.sum() / total),
        "macro-f1": float(f1[present].mean()),
        "uar": float(recall[support > 0].mean()),
    }


def ccc_from_moments(moments: np.ndarray, n: int) -> list[float]:
    """Concordance correlation per dimension from summed (p, t, pp, tt, pt)."""
    moments = np.asarray(moments, dtype=np.float64).reshape(-1, 5)
    out = []
    for sp, st, spp, stt, spt in moments:
        mp, mt = sp / n, st / n
        vp, vt = spp / n - mp * mp, stt / n - mt * mt
        cov = spt / n - mp * mt
        denom = vp + vt + (mp - mt) ** 2
        out.append(float(2 * cov / denom) if denom > 0 else 0.0)
    return out
