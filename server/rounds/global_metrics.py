"""Global metrics from counts that clients report (never from per-sample outputs).

Summed confusion matrices and moment sums give exactly the metric a pooled test set would. Noised counts
(``eval-dp-noise-multiplier``) may be negative: every sum is of the unclipped values (unbiased), only the
displayed rates are clipped into [0, 1], and ``cell_noise_variance`` gives each summed cell's noise
variance, which the report's intervals add.
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict

from shared_models import messages as msgs
from shared_models.calibration_bins import CALIBRATION_BINS, CALIBRATION_FIELDS, ece_from_counts, reliability
from shared_models.demographic_groups import (COUNT_SENSITIVITY, overall_noise_factor, parse_calibration_key,
                                              parse_metric_key)
from shared_models.taxonomy import NUM_EMOTIONS


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and unweighted average recall (UAR, the speech-emotion standard).

    Macro averages run over the classes present in the truth or the predictions,
    as scikit-learn's ``f1_score(average="macro")`` does, so absent classes
    (CREMA-D has no surprise) do not drag the score to zero.

    ``confusion`` may be a sum of noised counts with negative cells: every rate is
    a ratio of summed (unbiased) counts clipped into [0, 1] for display, never a
    ratio of cells clipped one by one (each clipped cell adds about 0.4 sigma).
    On exact counts the clipping changes nothing.
    """
    confusion = np.asarray(confusion, dtype=np.float64).reshape(NUM_EMOTIONS, NUM_EMOTIONS)
    total = confusion.sum()
    if total <= 0:
        return {"accuracy": float("nan"), "macro-f1": float("nan"), "uar": float("nan")}
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.clip(np.where(predicted > 0, tp / predicted, 0.0), 0.0, 1.0)
        recall = np.clip(np.where(support > 0, tp / support, 0.0), 0.0, 1.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "accuracy": float(np.clip(tp.sum() / total, 0.0, 1.0)),
        "macro-f1": float(f1[present].mean()) if present.any() else float("nan"),
        "uar": float(recall[support > 0].mean()) if (support > 0).any() else float("nan"),
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
    Its confusion and example count are noised and unclipped: the sums are unbiased
    (the count may even be negative for a tiny test split); clip only what is shown.
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


def _sum_by_group(metric_records, parse, dtype, shape) -> dict[str, dict[str, np.ndarray]]:
    """Attribute -> group -> the replies' arrays under the keys ``parse`` reads, summed; the first reply fixes
    the order (every reply has the same keys: the dataset's fixed schema)."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for metrics in metric_records:
        for key in metrics:
            parsed = parse(key)
            if parsed is None:
                continue
            attribute, group = parsed
            counts = np.asarray(metrics[key], dtype=dtype).reshape(shape)
            by_group = groups.setdefault(attribute, {})
            by_group[group] = by_group[group] + counts if group in by_group else counts
    return groups


def sum_group_counts(metric_records) -> dict[str, dict[str, np.ndarray]]:
    """Attribute -> group -> summed 7x7 confusion of the replies' ``grp.<attribute>.<group>`` keys.

    Integer sums, so the pooled per-group counts are exact (noised counts: unbiased, cells may be negative).
    """
    return _sum_by_group(metric_records, parse_metric_key, np.int64, (NUM_EMOTIONS, NUM_EMOTIONS))


def cell_noise_variance(noise_multipliers: list[float]) -> float:
    """Variance of the noise on one cell of a sum over nodes that noised their counts with these multipliers.

    Each node adds N(0, (z x sensitivity)^2) to the cell and rounds: the rounding adds about 1/12
    (Sheppard's correction; exact to 0.1% for z >= 0.5, an overestimate below), independently per node.
    """
    return float(sum((float(z) * COUNT_SENSITIVITY) ** 2 + 1.0 / 12.0 for z in noise_multipliers))


def sum_group_calibration(metric_records) -> dict[str, dict[str, np.ndarray]]:
    """Attribute -> group -> summed (bins, 3) calibration counts of the replies' ``cal.<attribute>.<group>`` keys."""
    return _sum_by_group(metric_records, parse_calibration_key, np.float64,
                         (CALIBRATION_BINS, len(CALIBRATION_FIELDS)))


ECE_NOISE_DRAWS = 2000


def ece_noise_bound(cell_variance: float, rows: float, bins: int = CALIBRATION_BINS) -> float:
    """95% bound on how far count noise moves an ECE read from noised counts (0 for exact counts).

    ECE = sum_b |confidence sum_b - correct_b| / rows; each bin's difference carries the noise of two cells
    (variance 2 v), so by the triangle inequality the noise moves the numerator by at most sum_b |e_b|, whose
    95th percentile is drawn here (fixed seed: a deterministic figure of v, rows and bins). The absolute
    values bias a noised ECE upwards; the test set's own sampling error is not included.
    """
    if cell_variance <= 0 or rows <= 0:
        return 0.0
    draws = np.random.default_rng(0).normal(0.0, np.sqrt(2 * cell_variance), (ECE_NOISE_DRAWS, bins))
    return float(np.quantile(np.abs(draws).sum(axis=1), 0.95) / rows)


def _calibration_view(counts: np.ndarray, cell_variance: float) -> dict:
    rows = float(counts[:, 0].sum() + counts[:, 1].sum())
    return {"counts": counts.tolist(), "ece": ece_from_counts(counts), "rows": rows,
            "ece_noise_bound": ece_noise_bound(cell_variance, rows), "reliability": reliability(counts)}


def calibration_summary(client_metrics: list[tuple[str, dict]], noise_multipliers: list[float]) -> dict | None:
    """metrics.jsonl's "calibration": summed bins, ECE and reliability overall and per group (None: no bins sent).

    The overall bins are the mean over attributes of their groups' sums (each attribute's groups partition the
    test rows), as the overall confusion is. Under noised counts every summed group cell carries noise of variance
    sum (z x sensitivity)^2 (not rounded), the overall cell ``overall_noise_factor`` x that; each ECE comes with
    ``ece_noise_bound`` and the record says it is noised.
    """
    groups = sum_group_calibration(m for _, m in client_metrics)
    if not groups:
        return None
    variance = float(sum((float(z) * COUNT_SENSITIVITY) ** 2 for z in noise_multipliers))
    overall_variance = overall_noise_factor([len(g) for g in groups.values()]) * variance if variance else 0.0
    overall = np.mean([np.sum(list(by_group.values()), axis=0) for by_group in groups.values()], axis=0)
    return {"bins": CALIBRATION_BINS, "fields": list(CALIBRATION_FIELDS), "noised": bool(noise_multipliers),
            "cell_noise_variance": variance, "overall_cell_noise_variance": overall_variance,
            "overall": _calibration_view(overall, overall_variance),
            "groups": {a: {g: _calibration_view(c, variance) for g, c in by_group.items()}
                       for a, by_group in groups.items()}}


def group_summary(client_metrics: list[tuple[str, dict]]) -> dict:
    """metrics.jsonl's "groups" (summed per-group confusion lists), "calibration" (``calibration_summary``) and,
    when the nodes noised them, "groups_dp".

    ``client_metrics`` is (client id, evaluation MetricRecord) of every reply without error. The sums are
    of the noised, unclipped cells; ``groups_dp.cell_noise_variance`` is the noise variance of every summed
    group cell and ``overall_cell_noise_variance`` that of every cell of the overall "confusion" (the nodes'
    mean over attributes, client/privacy/group_counts.overall_confusion, rounded once more), for intervals that
    include it.
    """
    groups = sum_group_counts(m for _, m in client_metrics)
    out: dict = {"groups": {a: {g: c.tolist() for g, c in by_group.items()} for a, by_group in groups.items()}}
    noised = [(cid, m) for cid, m in client_metrics if msgs.GROUP_DP_NOISE_MULTIPLIER in m]
    if noised:
        multipliers = [float(m[msgs.GROUP_DP_NOISE_MULTIPLIER]) for _, m in noised]
        out["groups_dp"] = {"noise_multiplier": multipliers[0], "sensitivity": COUNT_SENSITIVITY,
                            "overall_from_groups": True, "noised_nodes": len(noised),
                            "cell_noise_variance": cell_noise_variance(multipliers),
                            "overall_cell_noise_variance": (
                                overall_noise_factor([len(by_group) for by_group in groups.values()])
                                * cell_noise_variance(multipliers) + len(noised) / 12.0),
                            "clipped": "for display only: sums are of the unclipped noised cells",
                            "epsilon_by_client": {cid: float(m[msgs.GROUP_DP_EPSILON_SPENT]) for cid, m in noised}}
    calibration = calibration_summary(
        client_metrics, [float(m[msgs.GROUP_DP_NOISE_MULTIPLIER]) for _, m in noised])
    if calibration is not None:
        out["calibration"] = calibration
    return out


def aggregate_evaluation(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Flower ``evaluate_metrics_aggr_fn``: sum the clients' counts, then compute the metrics.

    Flower's default would average confusion matrices weighted by examples,
    which is not a confusion matrix; summing is exact. The per-group counts
    are left out here: metrics.jsonl sums them from the replies themselves
    (``group_summary``), and Flower would print every list at the end of a run.
    """
    confusion, loss_sum, n, _ = sum_counts(record[msgs.METRICS] for record in records)
    out = {"loss": loss_sum / n if n else float("nan"), "eval-examples": n}  # NaN when a node sent no loss
    out.update(classification_metrics(confusion))
    return MetricRecord(out)
