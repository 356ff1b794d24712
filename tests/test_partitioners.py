"""Partitioners: disjoint, covering, sized, deterministic, and skewed the way they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.data.loaders.base import EmotionData
from client.data.node_data import EmptySplitError, train_test_split
from client.data.partitioning import PartitionError, PartitionSpec, partition


def make_data(n: int = 1200, n_subjects: int = 60, seed: int = 0) -> EmotionData:
    rng = np.random.default_rng(seed)
    subjects = rng.integers(0, n_subjects, size=n)
    races = np.array(["caucasian", "african_american", "asian"], dtype=object)
    return EmotionData(
        dataset="test", modality="voice", root=Path("/nowhere"),
        refs=np.array([f"clip{i}.wav" for i in range(n)], dtype=object),
        labels=rng.integers(0, 7, size=n).astype(np.int64),
        subjects=np.array([f"s{s:03d}" for s in subjects], dtype=object),
        demographics={"race": races[rng.choice(3, size=n, p=[0.6, 0.15, 0.25])]},
        published_split=np.full(n, "", dtype=object),
    )


@pytest.mark.parametrize("method", ["iid", "dirichlet", "natural", "demographic"])
def test_partitions_are_disjoint_covering_sized_and_deterministic(method):
    data = make_data()
    spec = PartitionSpec(method=method, num_partitions=20, seed=7, dirichlet_alpha=0.5, min_size=10)
    parts = partition(data, spec)
    assert len(parts) == 20
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(data)  # disjoint and covering
    assert min(len(p) for p in parts) >= 10
    again = partition(data, spec)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(data, PartitionSpec(method=method, num_partitions=20, seed=8, min_size=10))
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def _label_entropy(data: EmotionData, parts: list[np.ndarray]) -> float:
    ent = []
    for p in parts:
        counts = np.bincount(data.labels[p], minlength=7) / len(p)
        nz = counts[counts > 0]
        ent.append(float(-(nz * np.log(nz)).sum()))
    return float(np.mean(ent))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    data = make_data(n=3000)
    iid = partition(data, PartitionSpec(method="iid", num_partitions=20, seed=1))
    mild = partition(data, PartitionSpec(method="dirichlet", num_partitions=20, seed=1, dirichlet_alpha=10.0))
    harsh = partition(data, PartitionSpec(method="dirichlet", num_partitions=20, seed=1, dirichlet_alpha=0.2, min_size=5))
    assert _label_entropy(data, iid) > _label_entropy(data, mild) > _label_entropy(data, harsh)


def test_natural_split_keeps_each_subject_on_one_client():
    data = make_data()
    parts = partition(data, PartitionSpec(method="natural", num_partitions=20, seed=3))
    owners: dict[str, int] = {}
    for client, rows in enumerate(parts):
        for subject in set(data.subjects[rows].tolist()):
            assert owners.setdefault(subject, client) == client


def test_demographic_split_concentrates_groups():
    data = make_data(n=3000)
    iid = partition(data, PartitionSpec(method="iid", num_partitions=10, seed=2))
    skew = partition(data, PartitionSpec(method="demographic", num_partitions=10, seed=2, demographic_alpha=0.1))

    def top_group_share(parts):
        return np.mean([max(np.unique(data.demographics["race"][p], return_counts=True)[1]) / len(p) for p in parts])

    assert top_group_share(skew) > top_group_share(iid) + 0.15


def test_impossible_requests_fail_with_reasons():
    data = make_data(n=100, n_subjects=5)
    with pytest.raises(PartitionError, match="at least 10 subjects"):
        partition(data, PartitionSpec(method="natural", num_partitions=10, min_size=2))
    with pytest.raises(PartitionError, match="too few for 50 clients"):
        partition(data, PartitionSpec(method="iid", num_partitions=50, min_size=10))
    with pytest.raises(PartitionError, match="unknown partitioner"):
        partition(data, PartitionSpec(method="random", num_partitions=2))
    with pytest.raises(PartitionError, match="no such attribute"):
        partition(data, PartitionSpec(method="demographic", num_partitions=2, demographic_attribute="ethnicity"))
    no_subjects = make_data(n=100)
    no_subjects.subjects[:] = ""
    with pytest.raises(PartitionError, match="subject"):
        partition(no_subjects, PartitionSpec(method="natural", num_partitions=2))


def test_client_train_test_split_is_disjoint_and_reproducible():
    rows = np.arange(100, 150)
    keys = [f"img_{r}.jpg".encode() for r in rows]
    train, test = train_test_split(rows, 0.2, seed=5, client_id=3, keys=keys)
    assert 0 < len(test) < 50 and len(train) + len(test) == 50
    assert not set(train.tolist()) & set(test.tolist())
    assert set(train.tolist()) | set(test.tolist()) == set(rows.tolist())
    train2, test2 = train_test_split(rows, 0.2, seed=5, client_id=3, keys=keys)
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    _, test_other_seed = train_test_split(rows, 0.2, seed=6, client_id=3, keys=keys)
    assert not np.array_equal(test, test_other_seed)
    # Two rows always give one train and one test row, whichever side their keys fall on.
    for seed in range(20):
        two_train, two_test = train_test_split(np.arange(2), 0.2, seed=seed, client_id=8, keys=[b"a", b"b"])
        assert len(two_train) == len(two_test) == 1
    with pytest.raises(EmptySplitError, match="client 9 has 1 samples"):
        train_test_split(np.arange(1), 0.2, seed=5, client_id=9, keys=[b"a"])
