"""Which test rows a simulated run scored: a digest of its test split, so ``fedemo compare`` can tell.

Runs compared on different test rows differ for reasons unrelated to what was varied. A simulated run's
test rows are recomputed from its data-dir and config (``pooled_rows``); the digest is SHA-256 over the
sorted per-record digests of (record key, label, face pixels). Deployed runs get no digest: a node sending
a hash of its test keys would release something unaccounted, so ``compare`` says it cannot confirm the rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from client.data.node_data import simulated_split
from client.data.partitioning import PartitionSpec, partition
from shared_models.config_error import ConfigError

SPLIT_KEYS = ("dataset", "task", "data-dir", "seed", "test-fraction", "num-supernodes", "partitioner")


def pooled_rows(data, settings) -> tuple[np.ndarray, np.ndarray]:
    """Union of all simulated clients' train rows and of their test rows."""
    from client.data.consent_withdrawals import read_withdrawals
    from client.data.node_data import folder_dataset_id, without_withdrawn

    spec = PartitionSpec.from_settings(settings, settings.num_supernodes)
    # the simulated federation's withdrawals (its state-dir), left out of each node's rows as the nodes do
    withdrawn = frozenset(read_withdrawals(settings.state_dir, folder_dataset_id(settings.dataset, data.root)))
    train, test = [], []
    for pid, rows in enumerate(partition(data, spec)):
        rows, _ = without_withdrawn(data, rows, withdrawn)
        tr, te = simulated_split(data, rows, settings.test_fraction, settings.seed, pid)
        train.append(tr)
        test.append(te)
    return np.concatenate(train), np.concatenate(test)


def split_digest(data, rows: np.ndarray) -> dict[str, Any]:
    """{"sha256", "n"} of the records at ``rows`` of ``data`` (an ``EmotionData``), independent of their order."""
    from client.data.record_keys import record_keys

    subset = data.subset(np.sort(np.asarray(rows, dtype=np.int64)))
    keys = record_keys(subset)
    per_record = []
    for i, key in enumerate(keys):
        h = hashlib.sha256(b"fedemo-test-row\0" + key + int(subset.labels[i]).to_bytes(8, "big"))
        if subset.faces is not None:
            h.update(np.ascontiguousarray(subset.faces[i]).tobytes())
        per_record.append(h.digest())
    total = hashlib.sha256(b"fedemo-test-split\0")
    for digest in sorted(per_record):
        total.update(digest)
    return {"sha256": total.hexdigest(), "n": len(per_record)}


def settings_of(run_config: dict[str, Any]):
    """The run's settings, its keys over today's defaults (a run from before a key existed still parses)."""
    from shared_models.settings.run_settings import RunSettings
    from simulations.run_config import load_run_config

    known = {f.name.replace("_", "-") for f in fields(RunSettings)}
    return load_run_config(None, {k: v for k, v in run_config.items() if k in known})[1]


def split_fingerprint(run_config: dict[str, Any], data_dir: str | Path | None) -> dict[str, Any] | None:
    """The digest of a simulated run's test rows from its data-dir as it is now; None for a deployed run.

    Raises ``ConfigError`` naming the folder when a simulated run's data-dir is gone.
    """
    from client.data.loaders.registry import load_dataset

    if not data_dir:
        return None
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data-dir {data_dir} of the run no longer exists: its test rows cannot be checked")
    settings = settings_of(run_config)
    data = load_dataset(settings.dataset, data_dir, settings.task, consent_default=settings.consent_default)
    _, test_rows = pooled_rows(data, settings)
    return {**split_digest(data, test_rows), "data_dir": str(data_dir),
            "settings": {k: run_config.get(k) for k in SPLIT_KEYS if k in run_config}}
