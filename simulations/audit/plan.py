"""The audit's canaries and their secret coins, prepared before training (docs/privacy.md "Empirical audit").

``sample``: m canary slots in hospitals' training sets hold a mislabelled record (coin 1) or the same record
with its true label (coin 0): one record replaced, DP-SGD's adjacency, and n unchanged. ``client``: m canary
nodes send a random unit direction at the clipping norm (coin 1) or nothing (coin 0). Coins come from
``secrets``; the plan file is read by the simulated canaries and the auditor, never by the coordinator.
"""

from __future__ import annotations

import functools
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from shared_models.atomic_files import atomic_write_json
from shared_models.settings.run_settings import ConfigError, RunSettings

PLAN_ENV = "FEDEMO_AUDIT_PLAN"  # the plan file's path, for the canary ClientApp in the engine's workers


def secret_coins(m: int) -> list[int]:
    """m fair coins from the OS CSPRNG: 1 = the canary is in training."""
    bits = secrets.randbits(m)
    return [(bits >> i) & 1 for i in range(m)]


def full_dataset(dataset: str, data_dir: str, task: str):
    """The whole shared dataset folder, as the loaders read it (canary rows index into it)."""
    return _full_dataset(dataset, str(Path(data_dir).resolve()), task)


@functools.lru_cache(maxsize=2)
def _full_dataset(dataset: str, root: str, task: str):
    from client.data.loaders.registry import load_dataset

    return load_dataset(dataset, root, task)


def node_rows(settings: RunSettings, data_dir: str) -> tuple[Any, list[tuple[np.ndarray, np.ndarray]]]:
    """The shared dataset and each simulated hospital's (train rows, test rows), from the node's own data source."""
    from client.data.node_data import client_samples

    data = full_dataset(settings.dataset, data_dir, settings.task)
    index = {ref: row for row, ref in enumerate(data.refs.tolist())}
    splits = []
    for pid in range(settings.num_supernodes):
        samples = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes}, data_dir)
        splits.append((np.array([index[r] for r in samples.train.data.refs.tolist()], dtype=np.int64),
                       np.array([index[r] for r in samples.test.data.refs.tolist()], dtype=np.int64)))
    return data, splits


def sample_plan(settings: RunSettings, data_dir: str) -> dict[str, Any]:
    """m test rows spread over the hospitals, each with a public wrong label, and their secret coins."""
    data, splits = node_rows(settings, data_dir)
    pool = [(pid, int(row)) for pid, (_, test) in enumerate(splits) for row in test]
    m = settings.audit_canaries
    if len(pool) < m:
        raise ConfigError(f"run-config audit-canaries = {m}: the simulated hospitals hold only {len(pool)} test rows "
                          "to make canaries of; lower it or raise synth-samples")
    rng = np.random.default_rng([settings.seed, 23])  # the choice and the wrong labels are public; the coins are not
    chosen = sorted(rng.choice(len(pool), size=m, replace=False).tolist())
    classes = np.unique(data.labels)
    taken = {pool[index] for index in chosen}
    canaries = []
    for index in chosen:
        pid, row = pool[index]
        true = int(data.labels[row])
        others = classes[classes != true]
        # A control: another of the node's test records of the same class, never a canary (it stays in the test
        # set): its margin moves with the class-level drift of every update, which the score subtracts.
        same = [int(r) for r in splits[pid][1] if int(data.labels[r]) == true and (pid, int(r)) not in taken]
        canaries.append({"node": pid, "row": row, "true_label": true, "canary_label": int(rng.choice(others)),
                         "control_row": int(rng.choice(same)) if same else row})
    return {"mode": "sample", "canaries": canaries, "coins": secret_coins(m)}


def client_plan(settings: RunSettings, data_dir: str) -> dict[str, Any]:
    """m canary nodes after the hospitals (partition ids H..H+m-1): a direction seed each, and the coins."""
    data, splits = node_rows(settings, data_dir)
    m = settings.audit_canaries
    seeds = [secrets.randbits(63) for _ in range(m)]  # the directions need not be secret; fresh ones cost nothing
    weight = int(round(np.mean([len(train) for train, _ in splits])))  # FedAvg's weight without central-dp
    return {"mode": "client", "hospitals": settings.num_supernodes, "clipping_norm": settings.central_dp_clipping_norm,
            "num_examples": weight, "canaries": [{"node": settings.num_supernodes + i, "seed": s}
                                                 for i, s in enumerate(seeds)], "coins": secret_coins(m)}


def write_plan(plan: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)
    path.chmod(0o600)
    return path


def initial_path(plan_file: str | Path) -> Path:
    """Where the canary nodes keep round 1's global model (the client scores' origin), beside the plan."""
    plan_file = Path(plan_file)
    return plan_file.with_name(plan_file.stem + "-initial.npz")


def updates_path(plan_file: str | Path, node: int | str) -> Path:
    """Where hospital ``node`` writes its canaries' margin gains, one line per round (sample audits)."""
    plan_file = Path(plan_file)
    return plan_file.with_name(f"{plan_file.stem}-updates-{node}.jsonl")


def read_plan(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def canary_direction(seed: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Canary ``seed``'s unit direction over the model's floating-point arrays (in the ArrayRecord's order)."""
    rng = np.random.default_rng(int(seed))
    parts = [rng.standard_normal(shape) for shape in shapes]
    norm = np.sqrt(sum(float(np.square(p).sum()) for p in parts))
    return [p / norm for p in parts]
