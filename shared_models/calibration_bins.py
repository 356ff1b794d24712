"""Calibration as counts: confidence bins x (correct, incorrect, confidence sum), and ECE from them.

Nodes send per group, per equal-width bin of the top-class probability, the correct and incorrect counts
and the sum of confidences; these sum across nodes exactly and give the standard binned ECE without
approximation. One test record moves its bin by at most 1 per cell, so with its confusion cell an
attribute's release has L2 sensitivity sqrt(3) (``COUNT_SENSITIVITY``).
"""

from __future__ import annotations

import numpy as np

CALIBRATION_BINS = 10
CALIBRATION_FIELDS = ("correct", "incorrect", "confidence_sum")  # per bin, in this order


def confidence_bin(confidence: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Bin index of each confidence in [0, 1]: [0, 1/bins), ..., [1 - 1/bins, 1] (1.0 in the last bin)."""
    return np.clip(np.floor(np.asarray(confidence, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def bin_counts(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> np.ndarray:
    """(bins, 3) float: per bin the correct count, the incorrect count and the sum of confidences."""
    out = np.zeros((bins, len(CALIBRATION_FIELDS)), dtype=np.float64)
    index = confidence_bin(confidence, bins)
    correct = np.asarray(correct, dtype=bool)
    np.add.at(out[:, 0], index[correct], 1.0)
    np.add.at(out[:, 1], index[~correct], 1.0)
    np.add.at(out[:, 2], index, np.asarray(confidence, dtype=np.float64))
    return out


def ece_from_predictions(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The standard binned ECE of per-sample confidences and correctness: sum_b n_b / N |acc_b - conf_b|."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = confidence_bin(confidence, bins)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total) if len(confidence) else float("nan")


def ece_from_counts(counts: np.ndarray) -> float:
    """ECE from (bins, 3) counts: sum_b |confidence sum_b - correct_b| / rows (noised counts: see ``reliability``).

    Equal to ``ece_from_predictions`` on exact counts. On noised counts the rows
    (the denominator) are the sum of the noised correct and incorrect cells,
    unbiased; the absolute values make the figure biased upwards by the noise,
    which is why the report gives it with its noise caveat and interval.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, len(CALIBRATION_FIELDS))
    rows = counts[:, 0].sum() + counts[:, 1].sum()
    if rows <= 0:
        return float("nan")
    return float(np.abs(counts[:, 2] - counts[:, 0]).sum() / rows)


def reliability(counts: np.ndarray) -> dict[str, list[float]]:
    """Per bin: rows, accuracy and mean confidence (NaN for a bin with no rows; rates clipped to [0, 1])."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, len(CALIBRATION_FIELDS))
    rows = counts[:, 0] + counts[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(rows > 0, np.clip(counts[:, 0] / rows, 0.0, 1.0), np.nan)
        confidence = np.where(rows > 0, np.clip(counts[:, 2] / rows, 0.0, 1.0), np.nan)
    bins = len(counts)
    return {"lower": [b / bins for b in range(bins)], "upper": [(b + 1) / bins for b in range(bins)],
            "rows": rows.tolist(), "accuracy": accuracy.tolist(), "confidence": confidence.tolist()}
