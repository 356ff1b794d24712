"""What a run will spend from a hospital's privacy budget, and the operator's approval before a first spend.

A DP run's first spend on a fresh ``dataset-id`` uses nearly all of its budget for good, and a SuperNode
cannot ask mid-run: ``fedemo node approve`` computes the plan with the node's own data and the run config,
exactly as the node will calibrate it, asks, and writes ``spend_approval.json``. A deployed node refuses a
first spend without that approval (``require_approval``, where the ClientApp opens its ledger), unless its
node config sets ``approve-first=false``.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from shared_models.atomic_files import atomic_write_text
from shared_models.config_error import ConfigError
from shared_models.privacy_ledger import LEDGER_FILE, LedgerError, PrivacyLedger
from shared_models.settings.defaults import default_run_config
from shared_models.settings.run_settings import RunSettings

APPROVAL_FILE = "spend_approval.json"
APPROVE_FIRST = "approve-first"  # node-config key: refuse a never-spent dataset's first spend until approved


@dataclass
class SpendPlan:
    dataset_id: str
    client_id: str
    state_dir: str
    train_records: int
    budget: float  # the training epsilon budget the run calibrates to (the smaller of the run's and the ledger's)
    delta: float
    spent_before: float  # training epsilon this dataset has spent already
    never_spent: bool
    num_server_rounds: int
    fraction_train: float
    planned_rounds: int  # rounds the node plans to be sampled (planned_participation)
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    epsilon_after_round: list[float]  # cumulative training epsilon after each planned round
    eval_releases: int  # noised evaluation releases planned (their own epsilon, the same budget)

    @property
    def total(self) -> float:
        return self.epsilon_after_round[-1] if self.epsilon_after_round else self.spent_before

    @property
    def per_round(self) -> list[float]:
        before = [self.spent_before, *self.epsilon_after_round[:-1]]
        return [after - b for after, b in zip(self.epsilon_after_round, before)]


def parse_node_config(text: str) -> dict[str, Any]:
    """A ``--node-config`` string, parsed as flower-supernode parses it."""
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text])) if text.strip() else {}


def run_settings(run_config_file: str | Path | None) -> RunSettings:
    """The federation's run config as the node will receive it: pyproject defaults fused with the file."""
    config = dict(default_run_config())
    if run_config_file is not None:
        path = Path(run_config_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such run config (the federation's, e.g. configs/deployment_dp.toml)")
        config.update(tomllib.loads(path.read_text(encoding="utf-8")))
    return RunSettings.from_config(config)


def state_dir_of(node_config: Mapping[str, Any]) -> Path:
    if not node_config.get("state-dir"):
        raise LedgerError('the node config names no state-dir: add state-dir="/absolute/path" (the ledger\'s folder)')
    return Path(str(node_config["state-dir"])).expanduser()


def plan_spend(settings: RunSettings, node_config: Mapping[str, Any]) -> SpendPlan:
    """The spend of one run of ``settings`` on this node's data, calibrated as the node will (nothing written)."""
    from client.privacy.dp_training import calibrate_noise, planned_participation
    from client.data.node_data import client_samples
    from shared_models.privacy_ledger import epsilon_of

    if not settings.dp:
        raise LedgerError("the run config has dp = false: such a run spends no privacy budget (and protects nothing)")
    if "data-path" not in node_config:
        raise ConfigError('--node-config names no data-path: give the node\'s own, as flower-supernode takes it '
                          '(data-path="..." dataset-format="..." dataset-id="..." state-dir="...")')
    samples = client_samples(settings, node_config, "")
    state_dir = state_dir_of(node_config)
    n = len(samples.train)
    delta = settings.dp_delta or 1.0 / (10 * max(n, 1))
    budget, prior = float(settings.dp_epsilon), []
    ledger_path = state_dir / LEDGER_FILE
    if ledger_path.is_file():
        ledger = PrivacyLedger.load(ledger_path)
        if ledger.dataset_id != samples.dataset_id:
            raise LedgerError(f"{ledger_path} records dataset {ledger.dataset_id!r}, but this node config serves "
                              f"{samples.dataset_id!r}")
        budget, delta = min(budget, ledger.epsilon_budget), min(delta, ledger.delta)
        prior = ledger.mechanisms("train")
        never = not ledger.events
    else:
        never = True
    batches = math.ceil(n / settings.batch_size)  # len(DataLoader): Opacus samples with q = 1 / batches
    sample_rate, steps = 1.0 / batches, settings.local_epochs * batches
    rounds = planned_participation(settings.num_server_rounds, settings.fraction_train)
    sigma = calibrate_noise(prior, sample_rate, steps * rounds, target_epsilon=budget, delta=delta,
                            accountant=settings.dp_accountant, max_noise=settings.dp_max_noise_multiplier)
    after = [epsilon_of(prior + [(sigma, sample_rate, steps * r)], delta, settings.dp_accountant)
             for r in range(1, rounds + 1)]
    evals = planned_participation(settings.num_server_rounds + 1, settings.fraction_evaluate) \
        if settings.eval_dp_noise_multiplier > 0 else 0
    return SpendPlan(dataset_id=samples.dataset_id, client_id=samples.client_id, state_dir=str(state_dir),
                     train_records=n, budget=budget, delta=delta,
                     spent_before=epsilon_of(prior, delta, settings.dp_accountant) if prior else 0.0,
                     never_spent=never, num_server_rounds=settings.num_server_rounds,
                     fraction_train=settings.fraction_train, planned_rounds=rounds, noise_multiplier=sigma,
                     sample_rate=sample_rate, steps_per_round=steps, epsilon_after_round=after, eval_releases=evals)


def describe(plan: SpendPlan) -> str:
    per = plan.per_round
    lines = [
        f"Privacy spend plan for dataset {plan.dataset_id!r} (node {plan.client_id}, {plan.train_records} training "
        f"records, ledger in {plan.state_dir}):",
        f"  budget: training epsilon {plan.budget:g} at delta {plan.delta:.2e} (replace one record), for this "
        "dataset across every run, for good; "
        + ("this dataset has never spent" if plan.never_spent else f"already spent {plan.spent_before:.3f}"),
        f"  this run: {plan.num_server_rounds} rounds at fraction-train {plan.fraction_train:g}; this node may be "
        f"sampled in up to {plan.planned_rounds} of them (the noise is calibrated for that many)",
        f"  DP-SGD: noise multiplier {plan.noise_multiplier:.3f}, sample rate {plan.sample_rate:.3f}, "
        f"{plan.steps_per_round} steps per round",
        f"  epsilon per round: {per[0]:.3f} in the first round, {per[-1]:.3f} in the last "
        f"(cumulative {', '.join(f'{e:.2f}' for e in plan.epsilon_after_round)})",
        f"  total after this run: epsilon {plan.total:.3f} of {plan.budget:g} "
        f"(remaining {max(0.0, plan.budget - plan.total):.3f} for every later run on this dataset)",
    ]
    if plan.eval_releases:
        lines.append(f"  noised evaluation counts: {plan.eval_releases} releases, their own epsilon up to "
                     f"{plan.budget:g} (add or remove one test record)")
    return "\n".join(lines)


def write_approval(plan: SpendPlan) -> Path:
    """Record the operator's approval of ``plan`` in the node's state folder (atomic)."""
    path = Path(plan.state_dir) / APPROVAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset_id": plan.dataset_id, "approved_epsilon": plan.budget, "approved_at": time.time(),
              "plan": {**asdict(plan), "total": plan.total}}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_approval(state_dir: Path) -> dict | None:
    path = Path(state_dir) / APPROVAL_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LedgerError(f"{path}: not a spend approval ({err.msg}); approve again with `fedemo node approve`")


def approval_required(node_config: Mapping[str, Any]) -> bool:
    """``approve-first`` as set, else on for a deployed node (a ``data-path``), off for a simulated one."""
    value = node_config.get(APPROVE_FIRST, "data-path" in node_config)
    if isinstance(value, str):
        value = value.strip().lower() not in ("false", "0", "no", "")
    return bool(value)


def require_approval(node_config: Mapping[str, Any], state_dir: Path, ledger: PrivacyLedger) -> None:
    """Under ``approve-first``, a never-spent dataset spends only what its operator approved (raises: declines)."""
    if not approval_required(node_config) or ledger.events:
        return
    approval = read_approval(state_dir)
    command = (f"run `fedemo node approve --node-config '...' --run-config RUN_CONFIG` on the node with its "
               f"node config and the federation's run config (state-dir {state_dir})")
    if approval is None or approval.get("dataset_id") != ledger.dataset_id:
        raise LedgerError(f"dataset {ledger.dataset_id!r} has never spent privacy budget and its operator has not "
                          f"approved a spend plan (approve-first): nothing trained, nothing spent; {command}")
    if float(approval.get("approved_epsilon", 0.0)) < ledger.epsilon_budget:
        raise LedgerError(f"dataset {ledger.dataset_id!r}: this run would spend up to epsilon "
                          f"{ledger.epsilon_budget:g} but its operator approved {approval['approved_epsilon']:g} "
                          f"(approve-first): nothing trained, nothing spent; {command}")
