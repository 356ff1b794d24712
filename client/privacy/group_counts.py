"""A node's per-group evaluation counts: which group each test sample is in, and what it sends.

For every demographic attribute and group: a 7x7 confusion matrix and calibration bins (every node sends
every key, zeros included, as Flower aggregates only shared keys); never per-sample outputs. Optionally
released through a Gaussian mechanism (L2 sensitivity sqrt(3) per attribute, add/remove adjacency, sample
rate 1) and recorded as one ``eval-counts`` ledger event; its epsilon composes in parallel with training's.
Noise from an OS-seeded generator. Derivation: docs/design_notes.md and docs/privacy.md.
"""

from __future__ import annotations

import secrets

import numpy as np

from client.data.loaders.base import EmotionData
from shared_models.privacy_ledger import ADD_REMOVE, BudgetExceeded, DPEvent, PrivacyLedger
from shared_models.calibration_bins import CALIBRATION_BINS, CALIBRATION_FIELDS
from shared_models.demographic_groups import COUNT_SENSITIVITY, calibration_key, group_schema, metric_key
from shared_models.taxonomy import NUM_EMOTIONS, UNKNOWN

EVAL_EVENT_KIND = "eval-counts"
EVAL_MAX_NOISE = 100.0  # beyond this the counts say nothing: a node whose budget would need more declines


def sample_groups(data: EmotionData, dataset: str) -> dict[str, tuple[np.ndarray, int]]:
    """Attribute -> (schema index of each row's group, number of groups); values outside the schema are unknown."""
    out = {}
    for attribute, groups in group_schema(dataset).items():
        index = {g: i for i, g in enumerate(groups)}
        values = data.demographics.get(attribute, np.full(len(data), UNKNOWN, dtype=object))
        codes = np.array([index.get(str(v), index[UNKNOWN]) for v in values], dtype=np.int64)
        out[attribute] = (codes, len(groups))
    return out


def group_count_metrics(group_confusion: dict[str, np.ndarray], dataset: str) -> dict[str, list[int]]:
    """The reply's group keys: one flattened 7x7 int list per (attribute, group) of the schema."""
    metrics = {}
    for attribute, groups in group_schema(dataset).items():
        counts = np.asarray(group_confusion[attribute], dtype=np.int64).reshape(len(groups), NUM_EMOTIONS * NUM_EMOTIONS)
        for i, group in enumerate(groups):
            metrics[metric_key(attribute, group)] = [int(v) for v in counts[i]]
    return metrics


def group_calibration_metrics(group_calibration: dict[str, np.ndarray], dataset: str) -> dict[str, list[float]]:
    """The reply's calibration keys: one flattened (bins x 3) float list per (attribute, group) of the schema."""
    metrics = {}
    cells = CALIBRATION_BINS * len(CALIBRATION_FIELDS)
    for attribute, groups in group_schema(dataset).items():
        counts = np.asarray(group_calibration[attribute], dtype=np.float64).reshape(len(groups), cells)
        for i, group in enumerate(groups):
            metrics[calibration_key(attribute, group)] = [float(v) for v in counts[i]]
    return metrics


def noised_calibration(group_calibration: dict[str, np.ndarray], noise_multiplier: float) -> dict[str, np.ndarray]:
    """Gaussian noise of std ``noise_multiplier`` x sensitivity on every calibration cell, NOT clipped, not rounded
    (the confidence sums are not integers); released with the confusion under one ledger event."""
    rng = np.random.default_rng(secrets.randbits(128))
    std = noise_multiplier * COUNT_SENSITIVITY
    return {attribute: np.asarray(counts, dtype=np.float64) + rng.normal(0.0, std, np.shape(counts))
            for attribute, counts in group_calibration.items()}


def noised_counts(group_confusion: dict[str, np.ndarray], noise_multiplier: float) -> dict[str, np.ndarray]:
    """Gaussian noise of std ``noise_multiplier`` x sensitivity on every cell, rounded to integers, NOT clipped.

    A cell may come out negative and is sent so (a MetricRecord int list holds negatives): the coordinator
    sums cells over nodes and groups (totals, an accuracy's denominator), and cells clipped at 0 first
    biased those sums upwards by about 0.4 sigma per near-empty cell (a 72-row split's total read about 230
    at sigma 2). Rounding keeps the mean (the Gaussian is symmetric) and adds at most about 1/12 to each
    cell's variance (Sheppard), which the coordinator's intervals include; it clips only what it displays
    (server/rounds/global_metrics.py).

    The generator is seeded from the OS (128 bits), never from the run seed,
    which the coordinator knows. Like Opacus outside its secure mode, the
    floating-point Gaussian is not hardened against precision attacks.
    """
    rng = np.random.default_rng(secrets.randbits(128))
    std = noise_multiplier * COUNT_SENSITIVITY
    return {attribute: np.rint(np.asarray(counts, dtype=np.float64) + rng.normal(0.0, std, np.shape(counts)))
            .astype(np.int64)
            for attribute, counts in group_confusion.items()}


def release_noised_counts(group_confusion: dict[str, np.ndarray], *, ledger: PrivacyLedger, run: str,
                          server_round: int, noise_multiplier: float) -> tuple[dict[str, np.ndarray], DPEvent]:
    """Check and record the release under the ledger's lock, then noise: raises BudgetExceeded (nothing sent)."""
    event = ledger.spend(run=run, server_round=server_round, noise_multiplier=noise_multiplier, sample_rate=1.0,
                         steps=len(group_confusion), max_grad_norm=COUNT_SENSITIVITY, kind=EVAL_EVENT_KIND)
    return noised_counts(group_confusion, noise_multiplier), event


def release_noised_evaluation(group_confusion: dict[str, np.ndarray], group_calibration: dict[str, np.ndarray], *,
                              ledger: PrivacyLedger, run: str, server_round: int, noise_multiplier: float
                              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], DPEvent]:
    """The confusion and calibration counts of every attribute as one accounted release: one Gaussian mechanism
    per attribute of sensitivity ``COUNT_SENSITIVITY`` (sqrt 3) covering both, recorded before anything is noised."""
    if set(group_calibration) != set(group_confusion):
        raise ValueError("the calibration bins must cover the same attributes as the confusion counts")
    noised, event = release_noised_counts(group_confusion, ledger=ledger, run=run, server_round=server_round,
                                          noise_multiplier=noise_multiplier)
    return noised, noised_calibration(group_calibration, noise_multiplier), event


def overall_calibration(group_calibration: dict[str, np.ndarray]) -> np.ndarray:
    """(bins, 3) calibration of all test rows: the mean over attributes of each attribute's groups summed,
    as ``overall_confusion`` (not rounded)."""
    return np.mean([np.asarray(c, dtype=np.float64).sum(axis=0) for c in group_calibration.values()], axis=0)


def overall_confusion(group_confusion: dict[str, np.ndarray]) -> np.ndarray:
    """The 7x7 confusion of all test rows from the noised group counts: the mean over attributes of each
    attribute's groups summed (each partitions the test rows), rounded; its noise variance per cell is
    ``overall_noise_factor`` x a group cell's (shared_models/demographic_groups.py says why)."""
    sums = [np.asarray(counts, dtype=np.float64).sum(axis=0) for counts in group_confusion.values()]
    return np.rint(np.mean(sums, axis=0)).astype(np.int64)


def eval_noise_multiplier(ledger: PrivacyLedger, run: str, *, attributes: int, planned_releases: int,
                          floor: float) -> float:
    """The run's noise on evaluation counts: the one already recorded for it, or a fresh calibration.

    ``eval-dp-noise-multiplier`` is a floor: a node raises it until the run's planned releases
    (``attributes`` Gaussian histograms per evaluation, ``planned_releases`` evaluations) and what its test
    records already spent fit the budget, as training calibrates its noise. Without this a fixed
    multiplier either wastes the evaluation budget or, under a smaller ``dp-epsilon``, makes every node
    decline every evaluation (a run at epsilon 1 ended before round 1). A run keeps one level, also across
    a node restart (read back from the ledger).
    """
    earlier = ledger.run_noise(run, EVAL_EVENT_KIND)
    if earlier is not None:
        return earlier
    from client.privacy.dp_training import calibrate_noise  # Opacus loads with it; evaluation without noise never needs it

    try:
        needed = calibrate_noise(ledger.mechanisms(EVAL_EVENT_KIND), 1.0, attributes * planned_releases,
                                 target_epsilon=ledger.epsilon_budget, delta=ledger.delta,
                                 accountant=ledger.accountant, max_noise=EVAL_MAX_NOISE, adjacency=ADD_REMOVE)
    except BudgetExceeded as err:
        raise BudgetExceeded(
            f"evaluation-count release declined: no noise multiplier up to {EVAL_MAX_NOISE:g} keeps the "
            f"evaluation epsilon within {ledger.epsilon_budget:g} for this run's {planned_releases} planned "
            f"evaluations (spent {ledger.spent(EVAL_EVENT_KIND):.3f}); ledger {ledger.path}") from err
    return max(float(floor), needed)
