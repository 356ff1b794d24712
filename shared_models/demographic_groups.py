"""The fixed demographic group schema of each dataset, shared by nodes and coordinator.

Flower aggregates only metric keys that every reply has, so every node must
report the same attributes and groups, whatever its own data holds: a group a
node has no sample of is sent with zero counts. The schema therefore depends
on the dataset format only (what it can annotate), never on a node's rows.
A value outside the canonical names (e.g. a free-text FER2013 sidecar cell)
counts as "unknown", as the loaders already do for unknown codes.
"""

from __future__ import annotations

import math

from shared_models.taxonomy import AGE_BANDS, UNKNOWN

# Canonical group names per attribute (docs/data.md), "unknown" last.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male", "unsure", UNKNOWN),
    "age": (*AGE_BANDS, UNKNOWN),
    "race": ("caucasian", "african_american", "asian", UNKNOWN),
    "ethnicity": ("hispanic", "not_hispanic", UNKNOWN),
}

# The attributes each published format can carry (FER2013: through its demographics sidecar).
DATASET_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "fer2013": ("sex", "age", "race"),
    "rafdb": ("sex", "age", "race"),
    "cremad": ("sex", "age", "race", "ethnicity"),
    "ravdess": ("sex",),
}

GROUP_KEY_PREFIX = "grp."
CALIBRATION_KEY_PREFIX = "cal."  # a group's calibration bins (shared_models/calibration_bins.py)
# L2 sensitivity of one attribute's release: its groups' confusion matrices and calibration bins. One test
# record (add/remove) moves one confusion cell by 1, one bin's correct-or-incorrect cell by 1 and that bin's
# confidence sum by its confidence (at most 1): sqrt(1 + 1 + 1). It was 1 while only the confusion was sent.
# The node noises every cell with noise multiplier x this (client/privacy/group_counts.py); the epsilon depends on
# the multiplier alone, so it holds; the coordinator's intervals and metrics.jsonl read it.
COUNT_SENSITIVITY = math.sqrt(3.0)


def overall_noise_factor(groups_per_attribute: list[int]) -> float:
    """Noise variance of one cell of the overall confusion, in units of one noised group cell's.

    Under noised counts the overall confusion is the mean over the A attributes of
    each attribute's groups summed (every attribute's groups partition the same test
    rows, so each sum is an unbiased copy of it, with independent noise): one cell
    sums G_a noised cells and the mean divides by A, so its variance is sum(G_a) / A^2
    of a group cell's. Averaging is post-processing: it costs no privacy and cuts the
    noise of the global figures by about sqrt(A) against the first attribute alone.
    """
    if not groups_per_attribute:
        raise ValueError("no attribute: the overall confusion needs at least one")
    return float(sum(groups_per_attribute)) / len(groups_per_attribute) ** 2


def group_schema(dataset: str) -> dict[str, tuple[str, ...]]:
    """Attribute -> its groups, in a fixed order, for a dataset format."""
    if dataset not in DATASET_ATTRIBUTES:
        raise ValueError(f"no demographic group schema for dataset {dataset!r}; known: {', '.join(DATASET_ATTRIBUTES)}")
    return {attr: ATTRIBUTE_GROUPS[attr] for attr in DATASET_ATTRIBUTES[dataset]}


def metric_key(attribute: str, group: str) -> str:
    """MetricRecord key of one group's flattened confusion matrix, e.g. "grp.race.asian"."""
    return f"{GROUP_KEY_PREFIX}{attribute}.{group}"


def _parse_prefixed_key(prefix: str, key: str) -> tuple[str, str] | None:
    if not key.startswith(prefix):
        return None
    attribute, _, group = key[len(prefix):].partition(".")
    return attribute, group


def parse_metric_key(key: str) -> tuple[str, str] | None:
    """(attribute, group) of a group key, None for any other key. Group names may contain dots."""
    return _parse_prefixed_key(GROUP_KEY_PREFIX, key)


def calibration_key(attribute: str, group: str) -> str:
    """MetricRecord key of one group's flattened calibration bins, e.g. "cal.race.asian"."""
    return f"{CALIBRATION_KEY_PREFIX}{attribute}.{group}"


def parse_calibration_key(key: str) -> tuple[str, str] | None:
    """(attribute, group) of a calibration key, None for any other key."""
    return _parse_prefixed_key(CALIBRATION_KEY_PREFIX, key)
