"""Global metrics from counts that clients report (never from per-sample outputs).

Summing clients' confusion matrices and moment sums gives exactly the metric a
pooled test set would give, so federated evaluation needs no raw predictions.
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict

from shared_models import messages as msgs
from shared_models.demographic_groups import parse_metric_key
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



def sum_counts(metric_records) -> tuple[np.ndarray, float, int, np.ndarray | None]:
    """Summed confusion, loss sum, example count and valence/arousal moments of evaluation replies.

    A DP node with noised counts sends no loss sum (it is not accounted): the
    loss is then unknown (NaN), never a sum over the nodes that happened to send one.
    """
    confusion = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    loss_sum, n, va = 0.0, 0, None
    for metrics in metric_records:
        confusion += np.asarray(metrics[msgs.CONFUSION], dtype=np.int64).reshape(NUM_EMOTIONS, NUM_EMOTIONS)
        loss_sum += float(metrics[msgs.LOSS_SUM]) if msgs.LOSS_SUM in metrics else float("nan")
        n += int(metrics[msgs.NUM_EXAMPLES])
        if msgs.VA_MOMENTS in metrics:
            moments = np.asarray(metrics[msgs.VA_MOMENTS], dtype=np.float64)
            va = moments if va is None else va + moments
    return confusion, loss_sum, n, va


def sum_group_counts(metric_records) -> dict[str, dict[str, np.ndarray]]:
    """Attribute -> group -> summed 7x7 confusion of the replies' ``grp.<attribute>.<group>`` keys.

    Integer sums, so the pooled per-group counts are exact; every reply has
    the same keys (the dataset's fixed schema), the first one fixes the order.
    """
    groups: dict[str, dict[str, np.ndarray]] = {}
    for metrics in metric_records:
        for key in metrics:
            parsed = parse_metric_key(key)
            if parsed is None:
                continue
            attribute, group = parsed
            counts = np.asarray(metrics[key], dtype=np.int64).reshape(NUM_EMOTIONS, NUM_EMOTIONS)
            by_group = groups.setdefault(attribute, {})
            by_group[group] = by_group[group] + counts if group in by_group else counts
    return groups


def group_summary(client_metrics: list[tuple[str, dict]]) -> dict:
    """metrics.jsonl's "groups" (summed per-group confusion lists) and, when the nodes noised them, "groups_dp".

    ``client_metrics`` is (client id, evaluation MetricRecord) of every reply without error.
    """
    groups = sum_group_counts(m for _, m in client_metrics)
    out: dict = {"groups": {a: {g: c.tolist() for g, c in by_group.items()} for a, by_group in groups.items()}}
    noised = [(cid, m) for cid, m in client_metrics if msgs.GROUP_DP_NOISE_MULTIPLIER in m]
    if noised:
        out["groups_dp"] = {"noise_multiplier": float(noised[0][1][msgs.GROUP_DP_NOISE_MULTIPLIER]), "sensitivity": 1,
                            "overall_from_groups": True,
                            "epsilon_by_client": {cid: float(m[msgs.GROUP_DP_EPSILON_SPENT]) for cid, m in noised}}
    return out


def aggregate_evaluation(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: sum the clients' counts, then compute the metrics.

    Flower's default would average confusion matrices weighted by examples,
    which is not a confusion matrix; summing is exact. The per-group counts
    are left out here: metrics.jsonl sums them from the replies themselves
    (``group_summary``), and Flower would print every list at the end of a run.
    """
    confusion, loss_sum, n, _ = sum_counts(record["metrics"] for record in records)
    out = {"loss": loss_sum / n if n else float("nan"), "eval-examples": n}  # NaN when a node sent no loss
    out.update(classification_metrics(confusion))
    return MetricRecord(out)
