"""A node's privacy ledger: every DP event ever spent on its dataset, in one hash-chained file.

Budgets belong to the data, not to a run: the ledger composes across rounds and runs and survives crashes.
Writes are atomic, each spend is one check-and-record under a file lock, the stricter of the stored and
configured budget/delta wins, an unreadable or deleted ledger is an error (never a reset), events are
hash-chained, and every epsilon is recomputed from the recorded events (``ledger_accounting``: PLD, two
adjacencies composed separately). Design in full: docs/privacy_ledger.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from shared_models.atomic_files import atomic_write_json
from shared_models.ledger_accounting import (ACCOUNTANT, ACCOUNTANTS, ADD_REMOVE,  # noqa: F401 (re-exported)
                                             ADJACENCY, EVENT_KINDS, LEGACY_ACCOUNTANTS, PLD_DISCRETIZATION,
                                             REPLACE_ONE, LedgerError, epsilon_of, group_mechanisms,
                                             pld_epsilon)

LEDGER_FILE = "privacy_ledger.json"
LOCK_FILE = "privacy_ledger.lock"
NODE_FILE = "node.json"


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


# 2: hash-chained events, each with its adjacency and delta. A schema-1 file (no chain, Opacus add/remove
# figures) is migrated when a node opens it: the chain is computed once over its events as they stand
# (nothing can prove what was removed before), its events keep their recorded figures, marked add/remove,
# and from then on the budget binds on the epsilons below, recomputed from those same events.
SCHEMA_VERSION = 2
class BudgetExceeded(RuntimeError):
    """Training this round would spend more than the dataset's remaining budget."""


@dataclass(frozen=True)
class DPEvent:
    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str  # the accountant epsilon_after was computed with (ACCOUNTANTS)
    max_grad_norm: float
    epsilon_after: float  # the epsilon of every event of this kind up to this one (schema 1: of every event)
    time: float = field(default_factory=time.time)
    kind: str = "train"  # EVENT_KINDS; for "eval-counts", max_grad_norm holds the L2 sensitivity per histogram
    adjacency: str = ADD_REMOVE  # the relation epsilon_after holds under (schema-1 events: add/remove)
    delta: float | None = None  # the delta epsilon_after holds at (schema-1 events: the file's delta)
    prev: str = ""  # hex SHA-256 of the previous event's canonical JSON (genesis_hash for the first)


def event_hash(event: DPEvent) -> str:
    """Hex SHA-256 of the event's canonical JSON (sorted keys, no spaces; floats as Python writes them)."""
    return hashlib.sha256(json.dumps(asdict(event), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def genesis_hash(dataset_id: str) -> str:
    """The ``prev`` of a ledger's first event: fixed by the dataset id, so a chain cannot be moved to another."""
    return hashlib.sha256(f"fedemo-privacy-ledger-genesis:{dataset_id}".encode()).hexdigest()


def _kind(kind: str) -> str:
    if kind not in EVENT_KINDS:
        raise LedgerError(f"unknown ledger event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
    return kind


@dataclass
class PrivacyLedger:
    path: Path
    dataset_id: str
    epsilon_budget: float
    delta: float  # effective: min(stored, configured)
    accountant: str
    events: list[DPEvent] = field(default_factory=list)
    stored_budget: float | None = None  # the budget in the file; epsilon_budget is min(stored, configured)
    run_names: dict[str, str] = field(default_factory=dict)  # Flower run id -> run folder name
    stored_delta: float | None = None  # the delta in the file; delta is min(stored, configured)
    migrated_from: int | None = None  # the schema version read, when older than SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.stored_budget is None:
            self.stored_budget = self.epsilon_budget
        if self.stored_delta is None:
            self.stored_delta = self.delta

    # ------------------------------------------------------------------ files
    @classmethod
    def open(cls, state_dir: str | Path, *, dataset_id: str, epsilon_budget: float, delta: float,
             accountant: str = ACCOUNTANT, run: tuple[str, str] | None = None,
             records: int | None = None) -> "PrivacyLedger":
        """Open the node's ledger, creating it only in a state folder that never had one.

        ``epsilon_budget`` and ``delta`` are the run's configured ones: the
        ledger's effective figures are the smaller of them and the stored ones.
        ``records`` is the node's training-set size n: a delta of 1/n or more
        is refused. ``run`` is (Flower run id, run folder name): the name the
        ledger shows that run by. A schema-1 ledger is migrated (chained) here.
        """
        if accountant != ACCOUNTANT:
            raise LedgerError(f"accountant {accountant!r}: a node sends its training-set size, so its training "
                              f"is accounted under replace-one, which only {ACCOUNTANT!r} (dp-accounting's PLD) "
                              "computes for Poisson-sampled DP-SGD; Opacus's prv and rdp account add/remove only")
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
                ledger.delta = min(ledger.stored_delta, float(delta))
                _check_delta(path, ledger.delta, records)
                changed = ledger.migrated_from is not None
                if run and run[1] and ledger.run_names.get(run[0]) != run[1]:
                    ledger.run_names[run[0]] = run[1]
                    changed = True
                if changed:
                    ledger.save()
                    ledger.migrated_from = None
                return ledger
            if node.exists():
                raise LedgerError(f"{path} is missing but {node} shows this node kept one: refusing to start "
                                  "with a fresh budget; restore the ledger from backup")
            _check_delta(path, float(delta), records)
            ledger = cls(path, dataset_id, epsilon_budget, float(delta), ACCOUNTANT,
                         run_names={run[0]: run[1]} if run and run[1] else {})
            ledger.save()
            atomic_write_json(node, {"schema_version": SCHEMA_VERSION, "dataset_id": dataset_id,
                                     "ledger": LEDGER_FILE})
            return ledger

    @classmethod
    def load(cls, path: str | Path) -> "PrivacyLedger":
        """Read and verify a ledger: a broken hash chain raises LedgerError naming the first broken event."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            version = raw.get("schema_version")
            if version not in (1, SCHEMA_VERSION):
                raise LedgerError(f"{path}: schema_version {version!r}, expected {SCHEMA_VERSION} (or 1, migrated)")
            budget = raw["budget"]
            stored_delta = float(budget["delta"])
            events = [DPEvent(**e) for e in raw["events"]]
            if version == 1:
                events = _chained([replace(e, adjacency=ADD_REMOVE, delta=stored_delta) for e in events],
                                  raw["dataset_id"])
            else:
                _verify_chain(path, raw["dataset_id"], events)
            return cls(path=path, dataset_id=raw["dataset_id"], epsilon_budget=float(budget["epsilon"]),
                       delta=stored_delta, accountant=ACCOUNTANT if version == 1 else raw["accountant"],
                       events=events, stored_budget=float(budget["epsilon"]), stored_delta=stored_delta,
                       run_names={str(k): str(v) for k, v in raw.get("run_names", {}).items()},
                       migrated_from=None if version == SCHEMA_VERSION else int(version))
        except LedgerError:
            raise
        except FileNotFoundError as err:
            raise LedgerError(f"{path}: privacy ledger not found") from err
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LedgerError(f"{path}: privacy ledger is unreadable or corrupt ({err}); "
                              "the node will not train until it is restored") from err

    def save(self) -> None:
        """Write the file (callers hold the lock; the stored budget and delta are never raised by a run)."""
        atomic_write_json(self.path, {
            "schema_version": SCHEMA_VERSION,
            "dataset_id": self.dataset_id,
            "accountant": self.accountant,
            "budget": {"epsilon": self.stored_budget, "delta": self.stored_delta},
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
        self.stored_delta = on_disk.stored_delta
        self.delta = min(self.delta, on_disk.stored_delta)

    # ----------------------------------------------------------------- chain
    def event_hashes(self) -> list[str]:
        """Every event's hash (``event_hash``), oldest first: a coordinator-recorded head must be among them."""
        return [event_hash(e) for e in self.events]

    def chain_head(self) -> str:
        """The newest event's hash ("" for a ledger with no events): what a DP reply carries."""
        return event_hash(self.events[-1]) if self.events else ""

    # ---------------------------------------------------------------- budget
    def run_noise(self, run: str, kind: str = "train") -> float | None:
        """The noise multiplier ``run`` first recorded for ``kind``: a run keeps one level, also across a node
        restart; None before its first release of that kind."""
        _kind(kind)
        return next((e.noise_multiplier for e in self.events if e.run == run and e.kind == kind), None)

    def mechanisms(self, kind: str = "train") -> list[tuple[float, float, int]]:
        """(noise multiplier, sample rate, steps) of every event of ``kind``."""
        _kind(kind)
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.events if e.kind == kind]

    def spent(self, kind: str = "train") -> float:
        """Epsilon spent by events of ``kind``, under its adjacency (``ADJACENCY``), at the effective delta."""
        return epsilon_of(self.mechanisms(kind), self.delta, ACCOUNTANT, ADJACENCY[kind])

    def remaining(self, kind: str = "train") -> float:
        return max(0.0, self.epsilon_budget - self.spent(kind))

    def check(self, noise_multiplier: float, sample_rate: float, steps: int, kind: str = "train") -> float:
        """Epsilon of ``kind`` after a planned release on the ledger as last read; raises BudgetExceeded past the budget.

        Advisory (it spares training a round that cannot be released); the
        binding check is :meth:`spend`'s, under the lock.
        """
        after = epsilon_of(self.mechanisms(kind) + [(noise_multiplier, sample_rate, steps)], self.delta,
                           ACCOUNTANT, ADJACENCY[kind])
        if after > self.epsilon_budget:
            what = "round" if kind == "train" else "evaluation-count release"
            raise BudgetExceeded(
                f"{what} declined: it would bring the {kind} epsilon ({ADJACENCY[kind]}) to {after:.3f} (budget "
                f"{self.epsilon_budget:g} at delta {self.delta:.2e}, spent {self.spent(kind):.3f}); ledger {self.path}")
        return after

    def spend(self, *, run: str, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
              max_grad_norm: float, kind: str = "train", epsilon_hint: float | None = None) -> DPEvent:
        """Check and record one release atomically, before anything is sent; raises BudgetExceeded (nothing recorded).

        Under an exclusive lock on the state folder the ledger is re-read,
        the release checked against the budget and appended, and the file
        replaced, so concurrent handles never lose or overspend each other's
        events. ``epsilon_hint`` is a :meth:`check` result for the same
        figures on the same history; it is reused only when no other handle
        recorded in between.
        """
        def checked_epsilon(unchanged: bool) -> float:
            if epsilon_hint is not None and unchanged and epsilon_hint <= self.epsilon_budget:
                return epsilon_hint
            return self.check(noise_multiplier, sample_rate, steps, kind)  # raises BudgetExceeded past the budget

        return self._append(run, server_round, noise_multiplier, sample_rate, steps, max_grad_norm, kind,
                            checked_epsilon)

    def record(self, *, run: str, server_round: int, noise_multiplier: float, sample_rate: float, steps: int,
               max_grad_norm: float, kind: str = "train") -> DPEvent:
        """Record a release that already happened (no budget check), under the lock, re-reading first.

        For releases that cannot be undone (a resumed round that was trained
        before a crash); everything else goes through :meth:`spend`.
        """
        def composed_epsilon(_unchanged: bool) -> float:
            return epsilon_of(self.mechanisms(kind) + [(noise_multiplier, sample_rate, steps)], self.delta,
                              ACCOUNTANT, ADJACENCY[kind])

        return self._append(run, server_round, noise_multiplier, sample_rate, steps, max_grad_norm, kind,
                            composed_epsilon)

    def _append(self, run, server_round, noise_multiplier, sample_rate, steps, max_grad_norm, kind,
                epsilon_after) -> DPEvent:
        """Under the lock: re-read, compute ``epsilon_after(no one else recorded)`` (may raise), chain, append, save."""
        _kind(kind)
        with _locked(self.path.parent):
            known = len(self.events)
            self._reload_events()
            after = epsilon_after(len(self.events) == known)
            event = DPEvent(run=run, round=server_round, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                            steps=steps, accountant=ACCOUNTANT, max_grad_norm=max_grad_norm,
                            epsilon_after=after, kind=kind, adjacency=ADJACENCY[kind], delta=self.delta,
                            prev=self.chain_head() or genesis_hash(self.dataset_id))
            self.events.append(event)
            self.save()
        return event

    def run_name(self, run: str) -> str:
        """The run folder's name of a Flower run id (the id itself for a ledger written before names were kept)."""
        return self.run_names.get(run, run)

    def summary(self) -> dict[str, Any]:
        """Budget, both epsilons (training, evaluation counts) and per run (by run folder name) what it spent."""
        per_run: dict[str, dict[str, Any]] = {}
        for e in self.events:
            r = per_run.setdefault(self.run_name(e.run), {"rounds": 0, "steps": 0, "eval_releases": 0,
                                                          "epsilon_after": 0.0, "eval_epsilon_after": 0.0,
                                                          "flower_run_ids": []})
            if e.run not in r["flower_run_ids"]:
                r["flower_run_ids"].append(e.run)
            if e.kind == "train":
                r["rounds"] += 1
                r["steps"] += e.steps
                r["epsilon_after"] = e.epsilon_after
            else:
                r["eval_releases"] += 1
                r["eval_epsilon_after"] = e.epsilon_after
        spent, eval_spent = self.spent("train"), self.spent("eval-counts")
        return {"dataset_id": self.dataset_id, "accountant": self.accountant, "delta": self.delta,
                "adjacency": dict(ADJACENCY), "budget": self.epsilon_budget, "stored_budget": self.stored_budget,
                "spent": spent, "remaining": max(0.0, self.epsilon_budget - spent),
                "eval_spent": eval_spent, "eval_remaining": max(0.0, self.epsilon_budget - eval_spent),
                "chain_head": self.chain_head(), "runs": per_run}

    def describe(self) -> str:
        """The ledger in plain words, for hospital staff and auditors."""
        s = self.summary()
        lines = [f"Privacy ledger {self.path}",
                 f"  dataset {s['dataset_id']}: budget epsilon {s['budget']:g} at delta {s['delta']:.2e} "
                 f"({s['accountant'].upper()} accountant), for training and for evaluation counts each",
                 f"  training (replace one record): spent epsilon {s['spent']:.3f}, remaining {s['remaining']:.3f}",
                 f"  evaluation counts (add or remove one test record): spent epsilon {s['eval_spent']:.3f}, "
                 f"remaining {s['eval_remaining']:.3f}",
                 f"  chain head {s['chain_head'] or '(no events)'}"]
        for run, r in s["runs"].items():
            evals = (f", {r['eval_releases']} noised evaluation-count releases (evaluation epsilon "
                     f"{r['eval_epsilon_after']:.3f} after it)") if r["eval_releases"] else ""
            ids = [i for i in r["flower_run_ids"] if i != run]
            flower = f" (Flower run {', '.join(ids)})" if ids else ""
            lines.append(f"  run {run}{flower}: {r['rounds']} rounds, {r['steps']} DP-SGD steps, training epsilon "
                         f"{r['epsilon_after']:.3f} after it{evals}")
        if not s["runs"]:
            lines.append("  no training recorded yet")
        return "\n".join(lines)


def _check_delta(path: Path, delta: float, records: int | None) -> None:
    """Refuse a delta that is not well below 1/n: it is the probability that the guarantee fails outright."""
    if not 0 < delta < 1:
        raise LedgerError(f"{path}: delta {delta!r} must be in (0, 1)")
    if records and delta >= 1.0 / records:
        raise LedgerError(f"{path}: delta {delta:.3g} is not below 1/n = {1.0 / records:.3g} (n = {records} training "
                          "records): delta is the probability that the epsilon guarantee fails outright, and at "
                          "1/n or more a mechanism that releases one whole record at random satisfies it; set "
                          "dp-delta well below 1/n (0 picks 1/(10 n))")


def _chained(events: list[DPEvent], dataset_id: str) -> list[DPEvent]:
    """The events with ``prev`` set as a fresh chain (migration of a schema-1 ledger)."""
    out, prev = [], genesis_hash(dataset_id)
    for e in events:
        e = replace(e, prev=prev)
        out.append(e)
        prev = event_hash(e)
    return out


def _verify_chain(path: Path, dataset_id: str, events: list[DPEvent]) -> None:
    prev = genesis_hash(dataset_id)
    for i, e in enumerate(events):
        if e.prev != prev:
            raise LedgerError(
                f"{path}: the hash chain breaks at event {i} (run {e.run}, round {e.round}, kind {e.kind}): its "
                "prev does not match the event before it, so events were removed, reordered or edited; the "
                "node will not train until the ledger is restored from backup")
        prev = event_hash(e)


@contextmanager
def _locked(state_dir: Path):
    """An exclusive advisory lock on the state folder's lock file (flock: released if the process dies)."""
    with open(Path(state_dir) / LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
