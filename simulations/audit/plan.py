"""The audit's canaries and their secret coins, prepared before training (docs/privacy.md "Empirical audit").

``sample``: m white-box gradient canaries spread over the hospitals (simulations/audit/gradient_canaries.py), each
a record slot whose clipped gradient is +C e_i (coin 1) or -C e_i (coin 0), e_i from its seed: one record
replaced, DP-SGD's adjacency, and n unchanged. ``client``: m canary
nodes send a random unit direction at the canary norm (coin 1: the clipping norm under central DP, otherwise the
median honest update norm or ``audit-canary-norm``) or nothing (coin 0). Coins come from
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
    """m gradient canaries dealt round-robin to the hospitals (public), a direction seed each, and the secret coins.

    Every hospital trains in DP-SGD with its own sample rate and steps, so each canary is audited under its own
    node's mechanism; ``data_dir`` is unused (gradient canaries touch no record), kept for the common signature.
    """
    del data_dir
    m, hospitals = settings.audit_canaries, settings.num_supernodes
    seeds = [secrets.randbits(63) for _ in range(m)]  # the directions need not be secret; the coins must be
    return {"mode": "sample", "hospitals": hospitals, "canary_gradient": "+C e_i (coin 1) or -C e_i (coin 0)",
            "canaries": [{"node": i % hospitals, "seed": s} for i, s in enumerate(seeds)], "coins": secret_coins(m)}


def client_plan(settings: RunSettings, data_dir: str) -> dict[str, Any]:
    """m canary nodes after the hospitals (partition ids H..H+m-1): a direction seed each, and the coins."""
    data, splits = node_rows(settings, data_dir)
    m = settings.audit_canaries
    seeds = [secrets.randbits(63) for _ in range(m)]  # the directions need not be secret; fresh ones cost nothing
    weight = int(round(np.mean([len(train) for train, _ in splits])))  # FedAvg's weight without central-dp
    hospitals = settings.num_supernodes
    norm, rule = client_canary_norm(settings)
    return {"mode": "client", "hospitals": hospitals, "clipping_norm": settings.central_dp_clipping_norm,
            "canary_norm": norm, "canary_norm_rule": rule,
            "norm_hospitals": sorted({0, hospitals // 2, hospitals - 1}),  # public picks, measured every round
            "num_examples": weight, "canaries": [{"node": hospitals + i, "seed": s}
                                                 for i, s in enumerate(seeds)], "coins": secret_coins(m)}


def client_canary_norm(settings: RunSettings) -> tuple[float | None, str]:
    """A coin-1 canary's update norm (None: measured every round) and the rule, as audit.json states it.

    Under central DP the clipping norm: the claim covers one node's update of at most that norm, so a canary at
    it is the worst case the accountant assumes. Without central DP nothing bounds an honest update, and canaries
    at the clipping norm drown in unclipped updates many times longer; by default they are as long as the
    median honest update of the same round (a node like the others), or ``audit-canary-norm``.
    """
    if settings.central_dp != "off":
        return settings.central_dp_clipping_norm, "central-dp-clipping-norm (the adjacency the claim covers)"
    if settings.audit_canary_norm > 0:
        return settings.audit_canary_norm, "audit-canary-norm (set in the run config)"
    return None, ("the median L2 norm of the updates of hospitals norm_hospitals, trained by the real node on "
                  "each round's global model (no central DP: nothing clips an honest update)")


def write_plan(plan: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)
    path.chmod(0o600)
    return path


def initial_path(plan_file: str | Path) -> Path:
    """Where the canary nodes keep round 1's global model (the client scores' origin), beside the plan."""
    plan_file = Path(plan_file)
    return plan_file.with_name(plan_file.stem + "-initial.npz")


def norms_path(plan_file: str | Path) -> Path:
    """Where the canary nodes keep each round's measured honest update norms (client audits without central DP)."""
    plan_file = Path(plan_file)
    return plan_file.with_name(plan_file.stem + "-norms.json")


def updates_path(plan_file: str | Path, node: int | str) -> Path:
    """Where hospital ``node`` writes its gradient canaries' scores, one line per round (sample audits)."""
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
