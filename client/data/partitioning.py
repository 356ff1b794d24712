"""Split one dataset into simulated hospitals (clients): ``iid``, ``dirichlet`` (label skew), ``natural`` (one
subject per client, as in real hospitals) and ``demographic`` (clients serve different populations).

Each is a deterministic function of (data, number of clients, seed); every client gets at least
``min_size`` samples or the call fails with the reason (an empty client would silently drop out). A
simulated node carves its own share (``client.data.node_data``); the centralised baseline pools them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client.data.loaders.base import EmotionData
from shared_models.taxonomy import UNKNOWN

PARTITIONERS = ("iid", "dirichlet", "natural", "demographic")
_MAX_DIRICHLET_TRIES = 200


class PartitionError(ValueError):
    """The requested split cannot be made from this data (says why)."""


@dataclass(frozen=True)
class PartitionSpec:
    method: str = "iid"
    num_partitions: int = 10
    seed: int = 42
    dirichlet_alpha: float = 0.5
    demographic_attribute: str = "race"
    demographic_alpha: float = 0.3
    min_size: int = 10

    @classmethod
    def from_settings(cls, settings, num_partitions: int) -> "PartitionSpec":
        """The split a run config asks for (shared_models.settings.run_settings.RunSettings)."""
        return cls(
            method=settings.partitioner, num_partitions=num_partitions, seed=settings.seed,
            dirichlet_alpha=settings.dirichlet_alpha, demographic_attribute=settings.demographic_attribute,
            demographic_alpha=settings.demographic_alpha, min_size=settings.min_partition_size,
        )


def partition(data: EmotionData, spec: PartitionSpec) -> list[np.ndarray]:
    """Row indices of ``data`` for each client: disjoint, covering, sorted."""
    if spec.num_partitions < 1:
        raise PartitionError(f"num_partitions must be >= 1, got {spec.num_partitions}")
    n = len(data)
    if n < spec.num_partitions * max(spec.min_size, 1):
        raise PartitionError(
            f"{data.dataset} at {data.root} has {n} samples: too few for {spec.num_partitions} "
            f"clients with at least {spec.min_size} each"
        )
    rng = np.random.default_rng(spec.seed)
    if spec.method == "iid":
        parts = np.array_split(rng.permutation(n), spec.num_partitions)
    elif spec.method == "dirichlet":
        parts = _dirichlet_split(data.labels, spec.num_partitions, spec.dirichlet_alpha, spec.min_size, rng)
    elif spec.method == "natural":
        parts = _natural_split(data, spec.num_partitions, spec.min_size, rng)
    elif spec.method == "demographic":
        groups = data.demographics.get(spec.demographic_attribute)
        if groups is None or np.all(groups == UNKNOWN):
            raise PartitionError(
                f"demographic partitioning by {spec.demographic_attribute!r}: {data.dataset} at "
                f"{data.root} has no such attribute (known: "
                f"{sorted(k for k, v in data.demographics.items() if not np.all(v == UNKNOWN))})"
            )
        _, codes = np.unique(groups.astype(str), return_inverse=True)
        parts = _dirichlet_split(codes, spec.num_partitions, spec.demographic_alpha, spec.min_size, rng)
    else:
        raise PartitionError(f"unknown partitioner {spec.method!r}; choose one of {', '.join(PARTITIONERS)}")
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet_split(
    keys: np.ndarray, k: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Spread each key's rows over k clients with Dirichlet(alpha) shares.

    Redraws until every client reaches min_size (the usual recipe of Hsu et al.
    2019); after a bounded number of tries it fails rather than loop forever.
    """
    if alpha <= 0:
        raise PartitionError(f"Dirichlet alpha must be > 0, got {alpha}")
    keys = np.asarray(keys)
    for _ in range(_MAX_DIRICHLET_TRIES):
        buckets: list[list[int]] = [[] for _ in range(k)]
        for key in np.unique(keys):
            rows = rng.permutation(np.flatnonzero(keys == key))
            shares = rng.dirichlet(np.full(k, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, chunk in enumerate(np.split(rows, cuts)):
                buckets[client].extend(chunk.tolist())
        if min(len(b) for b in buckets) >= min_size:
            return [np.array(b, dtype=np.int64) for b in buckets]
    raise PartitionError(
        f"could not give all {k} clients at least {min_size} samples with alpha={alpha} "
        f"after {_MAX_DIRICHLET_TRIES} draws; raise alpha, lower min-partition-size or use fewer clients"
    )


def _natural_split(data: EmotionData, k: int, min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Whole subjects to clients, balancing sample counts (largest subject first)."""
    subjects = data.subjects.astype(str)
    if np.any(subjects == ""):
        missing = int(np.sum(subjects == ""))
        raise PartitionError(
            f"natural partitioning needs a subject (speaker/actor) id for every sample; {data.dataset} at "
            f"{data.root} has {missing} samples without one (FER2013 needs the demographics sidecar's subject column)"
        )
    names, codes, counts = np.unique(subjects, return_inverse=True, return_counts=True)
    if len(names) < k:
        raise PartitionError(
            f"natural partitioning into {k} clients needs at least {k} subjects; {data.dataset} has {len(names)}"
        )
    # Shuffle before the stable sort so ties between equal-sized subjects are seed-dependent.
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    loads = np.zeros(k, dtype=np.int64)
    owner = np.empty(len(names), dtype=np.int64)
    for subject in order:
        client = int(np.argmin(loads))
        owner[subject] = client
        loads[client] += counts[subject]
    parts = [np.flatnonzero(owner[codes] == c) for c in range(k)]
    if min(len(p) for p in parts) < min_size:
        raise PartitionError(
            f"natural partitioning leaves a client with {min(len(p) for p in parts)} samples "
            f"(< min-partition-size {min_size}); use fewer clients"
        )
    return parts
