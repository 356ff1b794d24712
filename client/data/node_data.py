"""Where a node's data comes from: its own folder (a hospital) or a partition (a simulation).

A deployed SuperNode names its data in ``--node-config``
(``data-path``, ``dataset-format``); a simulated node has only Flower's
``partition-id`` / ``num-partitions`` and carves its share out of the shared
synthetic dataset the coordinator names. Both paths end in the same
``ClientSamples``, so the ClientApp is one app for simulation and deployment.

Loading, partitioning and splitting are cached per process (``lru_cache``,
bounded): Flower's simulation reuses a few worker processes for many virtual
clients over many rounds, and reparsing a dataset every round would dominate
the run time.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass
from logging import WARNING
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.common.logger import log

from client.data.consent import manifest_stamp, record_ids
from client.data.consent_withdrawals import read_withdrawals
from client.data.loaders.base import EmotionData, printable
from client.data.loaders.registry import load_dataset
from client.data.partitioning import PartitionSpec, partition
from client.data.record_keys import record_keys
from client.data.torch_data import EmotionSamples
from shared_models import messages as msgs
from shared_models.privacy_ledger import simulated_state_dir
from shared_models.settings.run_settings import RunSettings

_CACHE_SIZE = 64  # datasets, partitionings and client splits kept per process (least recently used go first)


# A hospital's own split is keyed by this constant, never by the run's seed: its ledger composes every run on
# its data, and the evaluation epsilon covers only test records, so a record must stay on one side across runs.
HOSPITAL_SPLIT_SEED = 0


class EmptySplitError(ValueError):
    """A node has too few samples to train and test on."""


@dataclass(frozen=True)
class NodeConsent:
    """What consent took out of a node's rows, and where its consent log lives. Record ids stay here."""

    manifest_sha256: str  # "" when the folder has no manifest
    policy: str  # consent-default: records the manifest does not name
    excluded: int  # the node's own records left out: refused or unnamed (a hospital's folder), and withdrawn
    withdrawn: int  # of which withdrawn (state-dir/consent_withdrawals.jsonl)
    state_dir: str  # the node's state folder for its consent log ("" without one)
    withdrawals_dir: str  # where its withdrawals are read ("" without one)
    consent_dataset_id: str  # what its withdrawals name


@dataclass
class ClientSamples:
    client_id: str
    train: EmotionSamples
    test: EmotionSamples
    dataset_id: str  # what the privacy budget belongs to: this node's data, named stably
    # A hospital's folder is its own, so its loader skips are its own; a simulated partition shares the
    # coordinator's folder, whose skips the coordinator's data check counts once (not once per client).
    owns_folder: bool = True
    consent: NodeConsent | None = None  # what consent removed from this node's rows (client.data.consent)

    @property
    def skipped(self) -> int:
        folder = len(self.train.data.skipped) if self.owns_folder else 0
        return folder + len(self.train.skipped) + len(self.test.skipped)


@dataclass(frozen=True)
class ConsentRule:
    """How a folder's consent is applied: the policy for unnamed records, the manifest (and its file stamp)."""

    policy: str = "exclude"
    manifest: str = ""  # the node config's consent-manifest ("": consent.csv in the folder, if any)
    stamp: tuple = ()  # the manifest's (path, mtime, size): an edited manifest is read again


def stamped(rule: ConsentRule, root: str) -> ConsentRule:
    """``rule`` with the stamp of the manifest it applies to ``root``: every cache below keys on it."""
    return ConsentRule(rule.policy, rule.manifest, manifest_stamp(root, rule.manifest or None))


def _load(dataset: str, root: str, task: str, rule: ConsentRule = ConsentRule()) -> EmotionData:
    """One parse per dataset folder, however it is spelled (relative or absolute), consent applied."""
    return _load_resolved(dataset, str(Path(root).resolve()), task, rule)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_resolved(dataset: str, root: str, task: str, rule: ConsentRule) -> EmotionData:
    return load_dataset(dataset, root, task, consent_default=rule.policy, consent_manifest=rule.manifest or None)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _partitions(dataset: str, data_dir: str, task: str, spec: PartitionSpec, rule: ConsentRule) -> list[np.ndarray]:
    """All simulated nodes' rows, computed once for the first node of a worker process that asks."""
    return partition(_load(dataset, data_dir, task, rule), spec)


def client_samples(settings: RunSettings, node_config: Mapping[str, Any], data_dir: str,
                   state_root: str = "") -> ClientSamples:
    """This node's train and test samples for the run's task, without the records consent excludes.

    A hospital's policy and manifest come from its node config (``consent-default``, ``consent-manifest``),
    its withdrawals from its ``state-dir``; simulated nodes take the run config's ``consent-default`` and the
    withdrawals in the state root (the run config's ``state-dir``, else ``state_root``). Withdrawals are read
    on every call, so one recorded during a run counts from the next message on.
    """
    if "data-path" in node_config:
        dataset = str(node_config.get("dataset-format", settings.dataset))
        root = str(node_config["data-path"])
        client_id = str(node_config.get(msgs.CLIENT_ID, Path(root).name))
        dataset_id = str(node_config.get("dataset-id", f"{dataset}:{Path(root).resolve()}"))
        rule = stamped(ConsentRule(str(node_config.get("consent-default", "exclude")),
                                   str(node_config.get("consent-manifest", ""))), root)
        state_dir = str(node_config.get("state-dir", ""))
        withdrawn = frozenset(read_withdrawals(state_dir, dataset_id))
        return _hospital_samples(dataset, root, client_id, dataset_id, settings.task, settings.seed,
                                 settings.test_fraction, settings.augment, settings.dp, rule, withdrawn, state_dir)

    if "partition-id" not in node_config:
        raise ValueError("this node has no data: name its folder in its node config (data-path=\"...\" "
                         "dataset-format=\"...\"), or simulate (partition-id) with a run-config data-dir")
    if not data_dir:
        raise ValueError("a simulated node needs the run's data-dir, which is empty (a deployment config?)")
    pid, num = int(node_config["partition-id"]), int(node_config["num-partitions"])
    spec = PartitionSpec.from_settings(settings, num)
    root = settings.state_dir or state_root
    withdrawn = frozenset(read_withdrawals(root, folder_dataset_id(settings.dataset, data_dir)))
    return _simulated_samples(settings.dataset, data_dir, settings.task, spec, pid, settings.test_fraction,
                              settings.augment, settings.dp, stamped(ConsentRule(settings.consent_default), data_dir),
                              withdrawn, str(root))


def folder_dataset_id(dataset: str, root: str | Path) -> str:
    """The default dataset id of a folder: its format and absolute path (a hospital's, unless it sets dataset-id)."""
    return f"{dataset}:{Path(root).resolve()}"


def without_withdrawn(data: EmotionData, rows: np.ndarray, withdrawn: frozenset) -> tuple[np.ndarray, int]:
    """``rows`` less those whose record was withdrawn, and how many that was."""
    if not withdrawn or len(rows) == 0:
        return rows, 0
    ids = record_ids(data.subset(rows))
    keep = np.array([record not in withdrawn for record in ids])
    return rows[keep], int(np.sum(~keep))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _hospital_samples(dataset: str, root: str, client_id: str, dataset_id: str, task: str, seed: int,
                      test_fraction: float, augment: bool, secret_augmentation: bool, rule: ConsentRule = ConsentRule(),
                      withdrawn: frozenset = frozenset(), state_dir: str = "") -> ClientSamples:
    """A hospital's train/test split: the dataset's published one if it has both parts, else by record key."""
    data = _load(dataset, root, task, rule)
    rows, n_withdrawn = without_withdrawn(data, np.arange(len(data)), withdrawn)
    if len(rows) == 0:
        raise EmptySplitError(f"{printable(root)}: every consented record was withdrawn ({n_withdrawn})")
    if n_withdrawn:
        data = data.subset(rows)
    for kind, refs in data.flagged.items():  # kept, but in the node's log with a count (once: this is cached)
        log(WARNING, "%s: %s: %d kept but flagged (first: %s); `fedemo data check` lists them",
            printable(root), kind, len(refs), ", ".join(refs[:3]))
    split = data.published_split.astype(str)
    if np.any(split == "train") and np.any(split == "test"):
        train_rows, test_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    else:
        train_rows, test_rows = train_test_split(np.arange(len(data)), test_fraction, HOSPITAL_SPLIT_SEED, client_id,
                                                 keys=record_keys(data))
    samples = _build(client_id, dataset_id, data, train_rows, test_rows, task, augment, seed, secret_augmentation)
    summary = data.consent
    samples.consent = NodeConsent(summary.sha256 if summary else "", rule.policy,
                                  (summary.excluded if summary else 0) + n_withdrawn, n_withdrawn, state_dir,
                                  state_dir, dataset_id)
    return samples


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _simulated_samples(dataset: str, data_dir: str, task: str, spec: PartitionSpec, pid: int,
                       test_fraction: float, augment: bool, secret_augmentation: bool,
                       rule: ConsentRule = ConsentRule(), withdrawn: frozenset = frozenset(),
                       state_root: str = "") -> ClientSamples:
    """Partition ``pid`` of the shared dataset, split into its own train and test rows by record key.

    The folder's manifest is applied before partitioning (its exclusions belong to the folder and are counted
    once, by the data check); withdrawals after it, so a withdrawal moves no other record between nodes.
    """
    data = _load(dataset, data_dir, task, rule)
    rows, n_withdrawn = without_withdrawn(data, _partitions(dataset, data_dir, task, spec, rule)[pid], withdrawn)
    if len(rows) == 0:
        raise EmptySplitError(f"client {pid}: every consented record of its share was withdrawn ({n_withdrawn})")
    train_rows, test_rows = simulated_split(data, rows, test_fraction, spec.seed, pid)
    dataset_id = f"{dataset}:{data_dir}#{spec.method}-{spec.num_partitions}-seed{spec.seed}/{pid}"
    samples = _build(str(pid), dataset_id, data, train_rows, test_rows, task, augment, spec.seed, secret_augmentation)
    samples.owns_folder = False
    summary = data.consent
    samples.consent = NodeConsent(summary.sha256 if summary else "", rule.policy, n_withdrawn, n_withdrawn,
                                  str(simulated_state_dir(state_root, str(pid))) if state_root else "", state_root,
                                  folder_dataset_id(dataset, data_dir))
    return samples


def simulated_split(data: EmotionData, rows: np.ndarray, test_fraction: float, seed: int,
                    pid: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated node ``pid``'s train and test rows of its partition ``rows`` (the centralised baseline pools these)."""
    return train_test_split(rows, test_fraction, seed, pid, keys=record_keys(data.subset(rows)))


def _build(client_id: str, dataset_id: str, data: EmotionData, train_rows, test_rows, task: str, augment: bool,
           seed: int, secret_augmentation: bool) -> ClientSamples:
    """The node's datasets; under DP the training augmentation starts on a secret stream (``EmotionSamples``)."""
    augment_seed = None if secret_augmentation else [seed, zlib.crc32(client_id.encode())]
    return ClientSamples(
        client_id=client_id,
        train=EmotionSamples(data.subset(train_rows), task, augment=augment, seed=augment_seed),
        test=EmotionSamples(data.subset(test_rows), task, augment=False, seed=augment_seed),
        dataset_id=dataset_id,
    )


def split_point(seed: int, key: bytes) -> float:
    """Where a record falls in [0, 1): sha256 of (seed, its key), so no other record moves it."""
    digest = hashlib.sha256(b"fedemo-split\0" + str(int(seed)).encode() + b"\0" + key).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def train_test_split(rows: np.ndarray, test_fraction: float, seed: int, client_id: int | str, *,
                     keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """A node's own split of its rows: row i is a test row when ``split_point(seed, keys[i]) < test_fraction``.

    ``keys`` are the rows' stable record keys (``client.data.record_keys``), aligned with ``rows``. Each
    record's side depends only on itself and the seed, so adding or removing one record moves no other
    between train and test (a permutation of the rows moved hundreds): record-level adjacency holds for
    the training set, and test records never enter training.

    At least one train and one test row whenever there are two rows: if every point falls on one side
    (probability (1-f)^n + f^n, below 1e-4 for n >= 42 at f = 0.2), the single record nearest the other
    side moves there. This is the only case where one record's presence moves another: only a node that
    small can meet it, and keeping it training beats refusing it (a refusal would equally depend on one
    record).
    """
    rows = np.asarray(rows)
    if not 0.0 < test_fraction < 1.0:
        raise EmptySplitError(f"test-fraction must be between 0 and 1, got {test_fraction}")
    if len(rows) < 2:
        raise EmptySplitError(f"client {client_id} has {len(rows)} samples: cannot hold out a test split")
    if len(keys) != len(rows):
        raise ValueError(f"client {client_id}: {len(keys)} record keys for {len(rows)} rows")
    points = np.array([split_point(seed, key) for key in keys])
    test = points < test_fraction
    if not test.any():
        test[np.argmin(points)] = True
    elif test.all():
        test[np.argmax(points)] = False
    return np.sort(rows[~test]), np.sort(rows[test])
