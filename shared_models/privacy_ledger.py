"""A node's privacy ledger: every DP event ever spent on its dataset, in one file.

Budgets belong to the data, not to a run: the ledger composes across rounds and
across runs, and survives crashes and restarts.

- Every write is atomic (``shared_models.atomic_files``), so a crash leaves
  either the old ledger or the new one, never half of one.
- Every spend is one check-and-record under an exclusive file lock, with the
  ledger re-read under the lock: two handles on one state folder (two runs
  on one node, two simulations sharing a ``state-dir``) both land on disk,
  and neither can pass the budget on a stale view of the other's spending.
- The stricter budget wins: a ledger's effective budget is the smaller of
  the one stored in its file and the one the run configures (``dp-epsilon``),
  so neither a doctored file nor a later run can widen it.
- A ledger that cannot be read is an error, never a silent reset. So is a
  missing ledger in a state folder that says it had one (``node.json``): a
  deleted ledger would otherwise hand the data a fresh budget.
- Epsilon is always recomputed from the recorded events (noise multiplier,
  sample rate, steps) with the recorded accountant, so anyone holding the file
  can recompute it with Opacus.
- Events carry Flower's numeric run id (what the coordinator's report matches
  them by); ``run_names`` maps each id to the run folder's name, which is how
  ``fedemo ledger`` names runs (a resumed run's Flower ids share one name).
"""

from __future__ import annotations

import fcntl
import json
import time
from functools import lru_cache
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared_models.atomic_files import atomic_write_json

LEDGER_FILE = "privacy_ledger.json"
LOCK_FILE = "privacy_ledger.lock"


def simulated_state_dir(root: str | Path, client_id: str) -> Path:
    """A simulated node's state folder under the run's (or the config's) state root."""
    return Path(root) / f"client-{client_id}"


def run_folder_name(state_root: Any, run_name: str = "") -> str:
    """The run's name as its run folder has it, for the ledger to name the run by.

    The coordinator sends every node ``state-root`` = ``<run folder>/node-state``
    (server/server_app.py), deployed nodes included, so its parent's name is the
    run folder's even when ``run-name`` was left empty; ``run_name`` is the
    fallback for a request without it.
    """
    return Path(str(state_root)).parent.name if state_root else run_name

NODE_FILE = "node.json"
SCHEMA_VERSION = 1
ACCOUNTANTS = ("prv", "rdp")
# What a ledger event released: a DP-SGD training round, or noised per-group evaluation counts
# (one Gaussian mechanism per attribute histogram, sample rate 1). Files without "kind" are training.
EVENT_KINDS = ("train", "eval-counts")


class LedgerError(RuntimeError):
    """The ledger is missing, corrupt or inconsistent; the node must not train."""


class BudgetExceeded(RuntimeError):
    """Training this round would spend more than the dataset's remaining budget."""


@dataclass(frozen=True)
class DPEvent:
    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    max_grad_norm: float
    epsilon_after: float
    time: float = field(default_factory=time.time)
    kind: str = "train"  # EVENT_KINDS; for "eval-counts", max_grad_norm holds the L2 sensitivity per histogram


def epsilon_of(events: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Epsilon of composed (noise multiplier, sample rate, steps) events under an Opacus accountant."""
    if not events:
        return 0.0
    if accountant not in ACCOUNTANTS:
        raise LedgerError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return _epsilon(tuple(group_mechanisms(events)), float(delta), accountant)


@lru_cache(maxsize=256)  # PRV takes about a second; `fedemo ledger` on 50 alike simulated nodes asks the same 50 times
def _epsilon(mechanisms: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    import numpy as np  # numpy and Opacus load here, where epsilon is computed, so `fedemo --help` stays quick
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = list(mechanisms)
    with np.errstate(divide="ignore"):  # PRV takes log(1 - q) = log(0) for sample rate 1 (eval counts); harmless
        return float(acc.get_epsilon(delta))


def group_mechanisms(events: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """One (noise multiplier, sample rate, steps) entry per distinct mechanism, wherever it stands in the history.

    Composition does not depend on order, so identical mechanisms compose as
    one with their steps added; interleaved training and evaluation-count
    events then cost the accountant two entries, not one per round.
    """
    steps_by_mechanism: dict[tuple[float, float], int] = {}
    for sigma, q, steps in events:
        steps_by_mechanism[(sigma, q)] = steps_by_mechanism.get((sigma, q), 0) + int(steps)
    return [(sigma, q, steps) for (sigma, q), steps in steps_by_mechanism.items()]


@dataclass
class PrivacyLedger:
    path: Path
    dataset_id: str
    epsilon_budget: float
    delta: float
    accountant: str
    events: list[DPEvent] = field(default_factory=list)
    stored_budget: float | None = None  # the budget in the file; epsilon_budget is min(stored, configured)
    run_names: dict[str, str] = field(default_factory=dict)  # Flower run id -> run folder name

    def __post_init__(self) -> None:
        if self.stored_budget is None:
            self.stored_budget = self.epsilon_budget

    # ------------------------------------------------------------------ files
    @classmethod
    def open(cls, state_dir: str | Path, *, dataset_id: str, epsilon_budget: float, delta: float,
             accountant: str, run: tuple[str, str] | None = None) -> "PrivacyLedger":
        """Open the node's ledger, creating it only in a state folder that never had one.

        ``epsilon_budget`` is the run's configured budget: the ledger's
        effective budget is the smaller of it and the stored one. ``run`` is
        (Flower run id, run folder name): the name the ledger shows that run by.
        """
        state_dir = Path(state_dir)
        path, node = state_dir / LEDGER_FILE, state_dir / NODE_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(state_dir):
            if path.exists():
                ledger = cls.load(path)
                if ledger.dataset_id != dataset_id:
                    raise LedgerError(f"{path}: records dataset {ledger.dataset_id!r}, but this node now serves "
                                      f"{dataset_id!r}; use a separate state folder per dataset")
                ledger.epsilon_budget = min(ledger.stored_budget, float(epsilon_budget))
                if run and run[1] and ledger.run_names.get(run[0]) != run[1]:
                    ledger.run_names[run[0]] = run[1]
                    ledger.save()
                return ledger
            if node.exists():
                raise LedgerError(f"{path} is missing but {node} shows this node kept one: refusing to start "
                                  "with a fresh budget; restore the ledger from backup")
            ledger = cls(path, dataset_id, epsilon_budget, delta, accountant,
                         run_names={run[0]: run[1]} if run and run[1] else {})
            ledger.save()
            atomic_write_json(node, {"schema_version": SCHEMA_VERSION, "dataset_id": dataset_id,
                                     "ledger": LEDGER_FILE})
            return ledger

    @classmethod
    def load(cls, path: str | Path) -> "PrivacyLedger":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("schema_version") != SCHEMA_VERSION:
                raise LedgerError(f"{path}: schema_version {raw.get('schema_version')!r}, expected {SCHEMA_VERSION}")
            budget = raw["budget"]
            return cls(path=path, dataset_id=raw["dataset_id"], epsilon_budget=float(budget["epsilon"]),
                       delta=float(budget["delta"]), accountant=raw["accountant"],
                       events=[DPEvent(**e) for e in raw["events"]], stored_budget=float(budget["epsilon"]),
                       run_names={str(k): str(v) for k, v in raw.get("run_names", {}).items()})
        except LedgerError:
            raise
        except FileNotFoundError as err:
            raise LedgerError(f"{path}: privacy ledger not found") from err
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LedgerError(f"{path}: privacy ledger is unreadable or corrupt ({err}); "
                              "the node will not train until it is restored") from err

    def save(self) -> None:
        """Write the file (callers hold the lock; the stored budget is never raised by a run)."""
        atomic_write_json(self.path, {
            "schema_version": SCHEMA_VERSION,
            "dataset_id": self.dataset_id,
            "accountant": self.accountant,
            "budget": {"epsilon": self.stored_budget, "delta": self.delta},
            "events": [asdict(e) for e in self.events],
            "run_names": self.run_names,
        })

    def _reload_events(self) -> None:
        """Re-read the events on disk (under the lock): another handle may have recorded since we read."""
        on_disk = type(self).load(self.path)
        if on_disk.dataset_id != self.dataset_id:
            raise LedgerError(f"{self.path}: now records dataset {on_disk.dataset_id!r}, not {self.dataset_id!r}")
        self.events = on_disk.events
        self.run_names = {**on_disk.run_names, **self.run_names}
        self.stored_budget = on_disk.stored_budget
        self.epsilon_budget = min(self.epsilon_budget, on_disk.stored_budget)

    # ---------------------------------------------------------------- budget
    def mechanisms(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.events]

    def spent(self) -> float:
        return epsilon_of(self.mechanisms(), self.delta, self.accountant)

    def remaining(self) -> float:
        return max(0.0, self.epsilon_budget - self.spent())

    def check(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after a planned round on the ledger as last read; raises BudgetExceeded past the budget.

        Advisory (it spares training a round that cannot be released); the
        binding check is :meth:`spend`'s, under the lock.
        """
        after = epsilon_of(self.mechanisms() + [(noise_multiplier, sample_rate, steps)], self.delta, self.accountant)
        if after > self.epsilon_budget:
            raise BudgetExceeded(
                f"round declined: it would bring epsilon to {after:.3f} (budget {self.epsilon_budget:g} at "
                f"delta {self.delta:.2e}, spent {self.spent():.3f}); ledger {self.path}")
        return after

    def spend(self, *, run: str, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
              max_grad_norm: float, kind: str = "train", epsilon_hint: float | None = None) -> DPEvent:
        """Check and record one release atomically, before anything is sent; raises BudgetExceeded (nothing recorded).

        Under an exclusive lock on the state folder the ledger is re-read,
        the release checked against the budget and appended, and the file
        replaced, so concurrent handles never lose or overspend each other's
        events. ``epsilon_hint`` is a :meth:`check` result for the same
        figures on the same history; it is reused only when no other handle
        recorded in between (PRV takes seconds).
        """
        def checked_epsilon(unchanged: bool) -> float:
            if epsilon_hint is not None and unchanged and epsilon_hint <= self.epsilon_budget:
                return epsilon_hint
            return self.check(noise_multiplier, sample_rate, steps)  # raises BudgetExceeded past the budget

        return self._append(run, server_round, noise_multiplier, sample_rate, steps, max_grad_norm, kind,
                            checked_epsilon)

    def record(self, *, run: str, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
               max_grad_norm: float, kind: str = "train") -> DPEvent:
        """Record a release that already happened (no budget check), under the lock, re-reading first.

        For releases that cannot be undone (a resumed round that was trained
        before a crash); everything else goes through :meth:`spend`.
        """
        def composed_epsilon(_unchanged: bool) -> float:
            return epsilon_of(self.mechanisms() + [(noise_multiplier, sample_rate, steps)], self.delta,
                              self.accountant)

        return self._append(run, server_round, noise_multiplier, sample_rate, steps, max_grad_norm, kind,
                            composed_epsilon)

    def _append(self, run, server_round, noise_multiplier, sample_rate, steps, max_grad_norm, kind,
                epsilon_after) -> DPEvent:
        """Under the lock: re-read, compute ``epsilon_after(no one else recorded)`` (may raise), append, save."""
        if kind not in EVENT_KINDS:
            raise LedgerError(f"unknown ledger event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
        with _locked(self.path.parent):
            known = len(self.events)
            self._reload_events()
            after = epsilon_after(len(self.events) == known)
            event = DPEvent(run=run, round=server_round, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                            steps=steps, accountant=self.accountant, max_grad_norm=max_grad_norm,
                            epsilon_after=after, kind=kind)
            self.events.append(event)
            self.save()
        return event

    def run_name(self, run: str) -> str:
        """The run folder's name of a Flower run id (the id itself for a ledger written before names were kept)."""
        return self.run_names.get(run, run)

    def summary(self) -> dict[str, Any]:
        """Budget, spend and remaining, and per run (by run folder name): rounds, steps and epsilon after it."""
        per_run: dict[str, dict[str, Any]] = {}
        for e in self.events:
            r = per_run.setdefault(self.run_name(e.run), {"rounds": 0, "steps": 0, "eval_releases": 0,
                                                          "epsilon_after": 0.0, "flower_run_ids": []})
            if e.run not in r["flower_run_ids"]:
                r["flower_run_ids"].append(e.run)
            if e.kind == "train":
                r["rounds"] += 1
                r["steps"] += e.steps
            else:
                r["eval_releases"] += 1
            r["epsilon_after"] = e.epsilon_after
        spent = self.spent()
        return {"dataset_id": self.dataset_id, "accountant": self.accountant, "delta": self.delta,
                "budget": self.epsilon_budget, "stored_budget": self.stored_budget, "spent": spent,
                "remaining": max(0.0, self.epsilon_budget - spent), "runs": per_run}

    def describe(self) -> str:
        """The ledger in plain words, for hospital staff and auditors."""
        s = self.summary()
        lines = [f"Privacy ledger {self.path}",
                 f"  dataset {s['dataset_id']}: budget epsilon {s['budget']:g} at delta {s['delta']:.2e} "
                 f"({s['accountant'].upper()} accountant)",
                 f"  spent epsilon {s['spent']:.3f}, remaining {s['remaining']:.3f}"]
        for run, r in s["runs"].items():
            evals = f", {r['eval_releases']} noised evaluation-count releases" if r["eval_releases"] else ""
            ids = [i for i in r["flower_run_ids"] if i != run]
            flower = f" (Flower run {', '.join(ids)})" if ids else ""
            lines.append(f"  run {run}{flower}: {r['rounds']} rounds, {r['steps']} DP-SGD steps{evals}, "
                         f"epsilon {r['epsilon_after']:.3f} after it")
        if not s["runs"]:
            lines.append("  no training recorded yet")
        return "\n".join(lines)


@contextmanager
def _locked(state_dir: Path):
    """An exclusive advisory lock on the state folder's lock file (flock: released if the process dies)."""
    with open(Path(state_dir) / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
