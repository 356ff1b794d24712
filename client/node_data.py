"""Where a node's data comes from: its own folder (a hospital) or a partition (a simulation).

A deployed SuperNode names its data in ``--node-config``
(``data-path``, ``dataset-format``); a simulated node has only Flower's
``partition-id`` / ``num-partitions`` and carves its share out of the shared
synthetic dataset the coordinator names. Both paths end in the same
``ClientSamples``, so the ClientApp is one app for simulation and deployment.

Loading and partitioning are cached per process: Flower's simulation reuses a
few worker processes for many virtual clients over many rounds, and reparsing
a dataset every round would dominate the run time.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from client.loaders.base import EmotionData
from client.loaders.registry import load_dataset
from client.torch_data import EmotionSamples
from shared_models.run_settings import RunSettings

_CACHE_SIZE = 64
_datasets: "OrderedDict[tuple, EmotionData]" = OrderedDict()
_partitions: "OrderedDict[tuple, list[np.ndarray]]" = OrderedDict()
_samples: "OrderedDict[tuple, ClientSamples]" = OrderedDict()


class EmptySplitError(ValueError):
    """A node has too few samples to train and test on."""


@dataclass
class ClientSamples:
    client_id: str
    train: EmotionSamples
    test: EmotionSamples
    dataset_id: str  # what the privacy budget belongs to: this node's data, named stably

    @property
    def skipped(self) -> int:
        return len(self.train.data.skipped) + len(self.train.skipped) + len(self.test.skipped)


def _remember(cache: OrderedDict, key: tuple, value):
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _load(dataset: str, root: str, task: str) -> EmotionData:
    key = (dataset, str(Path(root).resolve()), task)
    if key in _datasets:
        _datasets.move_to_end(key)
        return _datasets[key]
    return _remember(_datasets, key, load_dataset(dataset, root, task))


def client_samples(settings: RunSettings, node_config: Mapping[str, Any], data_dir: str) -> ClientSamples:
    """This node's train and test samples for the run's task."""
    if "data-path" in node_config:
        dataset = str(node_config.get("dataset-format", settings.dataset))
        root = str(node_config["data-path"])
        client_id = str(node_config.get("client-id", Path(root).name))
        key = ("node", dataset, root, settings.task, settings.seed, settings.test_fraction, settings.augment)
        if key not in _samples:
            data = _load(dataset, root, settings.task)
            train_rows, test_rows = _node_split(data, settings)
            dataset_id = str(node_config.get("dataset-id", f"{dataset}:{Path(root).resolve()}"))
            _remember(_samples, key, _build(client_id, dataset_id, data, train_rows, test_rows, settings))
        return _samples[key]

    from simulations.partitioners import PartitionSpec, partition

    if "partition-id" not in node_config:
        raise ValueError("this node has no data: name its folder in its node config (data-path=\"...\" "
                         "dataset-format=\"...\"), or simulate (partition-id) with a run-config data-dir")
    if not data_dir:
        raise ValueError("a simulated node needs the run's data-dir, which is empty (a deployment config?)")
    pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])
    spec = PartitionSpec.from_settings(settings, num)
    key = ("sim", settings.dataset, data_dir, settings.task, spec, pid, settings.test_fraction, settings.augment)
    if key not in _samples:
        data = _load(settings.dataset, data_dir, settings.task)
        parts_key = (settings.dataset, data_dir, settings.task, spec)
        if parts_key not in _partitions:
            _remember(_partitions, parts_key, partition(data, spec))
        parts = _partitions[parts_key]
        train_rows, test_rows = train_test_split(parts[pid], settings.test_fraction, settings.seed, pid)
        dataset_id = f"{settings.dataset}:{data_dir}#{spec.method}-{num}-seed{spec.seed}/{pid}"
        _remember(_samples, key, _build(str(pid), dataset_id, data, train_rows, test_rows, settings))
    return _samples[key]


def _node_split(data: EmotionData, settings: RunSettings) -> tuple[np.ndarray, np.ndarray]:
    """A hospital's train/test split: the dataset's published one if it has both parts."""
    split = data.published_split.astype(str)
    if np.any(split == "train") and np.any(split == "test"):
        return np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    return train_test_split(np.arange(len(data)), settings.test_fraction, settings.seed, 0)


def _build(client_id: str, dataset_id: str, data: EmotionData, train_rows, test_rows,
           settings: RunSettings) -> ClientSamples:
    seed = [settings.seed, zlib.crc32(client_id.encode())]
    return ClientSamples(
        client_id=client_id,
        train=EmotionSamples(data.subset(train_rows), settings.task, augment=settings.augment, seed=seed),
        test=EmotionSamples(data.subset(test_rows), settings.task, augment=False, seed=seed),
        dataset_id=dataset_id,
    )


def train_test_split(rows: np.ndarray, test_fraction: float, seed: int, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's own split of its rows, reproducible from (seed, client id)."""
    if not 0.0 < test_fraction < 1.0:
        raise EmptySplitError(f"test-fraction must be between 0 and 1, got {test_fraction}")
    if len(rows) < 2:
        raise EmptySplitError(f"client {client_id} has {len(rows)} samples: cannot hold out a test split")
    rng = np.random.default_rng([seed, client_id])
    shuffled = rng.permutation(rows)
    n_test = min(max(1, int(round(test_fraction * len(rows)))), len(rows) - 1)
    return np.sort(shuffled[n_test:]), np.sort(shuffled[:n_test])
