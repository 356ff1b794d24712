"""One metrics.jsonl line and one ``[fedemo] round`` line per round, from every reply of the round.

Flower's aggregated MetricRecords hide the replies that failed or were
rejected; the recorder sees them all. It is handed each round's training
entry (by the FedEmo strategy after screening, or by the SecAgg+ workflow)
and writes the round when its evaluation arrives. Its history and the
nodes' latest DP reports go into the checkpoint, so a resumed run's summary
covers every round.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Any, Iterable

from flwr.app import Message
from flwr.common.logger import log

from server.rounds import console
from server.record.run_record import RunRecord, evaluation_summary, training_summary
from server.aggregation.update_checks import Rejection, client_id


class RoundRecorder:
    """Collects a round's training entry, writes the round once it is evaluated."""

    def __init__(self, record: RunRecord, num_rounds: int):
        self.record = record
        self.num_rounds = num_rounds
        self.pending_train: dict[int, dict] = {}
        self.history: list[dict] = []
        self.privacy: dict[str, dict] = {}  # client -> its latest DP report (epsilon spent so far, ...)
        self.central = None  # server.privacy.central_dp.CentralDP when client-level DP is on
        self.client_of_node: dict[int, str] = {}  # a failed reply carries only Flower's node id
        self.clock = console.RoundClock(num_rounds)  # elapsed time and ETA on each round line

    def restore(self, history: list[dict], privacy: dict[str, dict]) -> None:
        """Continue a checkpointed run: its rounds so far, and metrics.jsonl cut back to them."""
        self.history = list(history)
        self.privacy = dict(privacy)
        self.record.rewrite_rounds(self.history)

    def train_replies(self, server_round: int, replies: Iterable[Message], rejected: list[Rejection],
                      norms: dict[str, float] | None = None) -> None:
        """A training round's replies: the accepted and failed ones, plus what screening rejected."""
        replies = list(replies)
        self._learn_client_ids(replies)
        entry = training_summary(replies)
        self._name_failures(entry["failures"])
        entry["rejected"] = [r.to_json() for r in rejected]
        if norms:
            entry["update_norms"] = norms
        for r in rejected:
            log(WARNING, "[fedemo] round %d: rejected the update of client %s: %s", server_round, r.client, r.reason)
        self.train_entry(server_round, entry)

    def train_entry(self, server_round: int, entry: dict[str, Any]) -> None:
        self.pending_train[server_round] = entry

    def has_train(self, server_round: int) -> bool:
        return server_round in self.pending_train

    def train_of(self, server_round: int) -> dict[str, Any]:
        """The round's training entry so far (empty before the screen saw its replies)."""
        return self.pending_train.get(server_round, {})

    def mark_not_aggregated(self, server_round: int, why: str) -> None:
        """The round's global model is the previous one; the record and the log say so."""
        entry = self.pending_train.setdefault(server_round, {"clients": [], "failures": [], "rejected": []})
        entry["aggregated"] = False
        entry["not_aggregated_because"] = why
        log(WARNING, "[fedemo] round %d: %s; the global model is unchanged", server_round, why)

    def evaluation_replies(self, server_round: int, replies: Iterable[Message]) -> None:
        replies = list(replies)
        self._learn_client_ids(replies)
        self.log(server_round, evaluation_summary(replies))

    def _learn_client_ids(self, replies: list[Message]) -> None:
        self.client_of_node.update({r.metadata.src_node_id: client_id(r) for r in replies if not r.has_error()})

    def _name_failures(self, failures: list[dict]) -> None:
        """A failure names the node's client id when an earlier reply of that node told it."""
        for failure in failures:
            if failure.get("node_id") in self.client_of_node:
                failure["client"] = self.client_of_node[failure["node_id"]]

    def log(self, server_round: int, evaluation: dict) -> None:
        entry = {"round": server_round, **evaluation, "train": self.pending_train.pop(server_round, None)}
        self._name_failures(entry["evaluate"]["failures"])
        if self.central is not None:  # client-level spend after this round's release
            entry["central_dp"] = self.central.spent()
        for client in (entry["train"] or {}).get("clients", []):
            if "dp" in client:
                self.privacy[client["client"]] = client["dp"]
        self.record.log_round(entry)
        self.history.append(entry)
        train = entry["train"] or {}
        trained, rejected = len(train.get("clients", [])), len(train.get("rejected", []))
        failed = len(entry["evaluate"]["failures"]) + len(train.get("failures", []))
        extra = ""
        if "ccc_valence" in entry:
            extra = f" ccc-v {entry['ccc_valence']:.3f} ccc-a {entry['ccc_arousal']:.3f}"
        epsilons = {"training": max((p["epsilon"] for p in self.privacy.values()), default=None),
                    "evaluation": max(self.eval_epsilons().values(), default=None),
                    "client-level": (entry.get("central_dp") or {}).get("epsilon")}
        if epsilons["training"] is not None:
            extra += f"  max client epsilon {epsilons['training']:.3f}"
        if epsilons["evaluation"] is not None:
            extra += f"  max evaluation-count epsilon {epsilons['evaluation']:.3f}"
        if epsilons["client-level"] is not None:
            extra += f"  client-level epsilon {epsilons['client-level']:.3f}"
        if rejected:
            extra += "  rejected: " + ", ".join(f"client {r['client']}" for r in train["rejected"])
        if train.get("aggregated") is False:
            extra += "  (model unchanged)"
        clock = self.clock.tick(server_round)
        # One short line per round (console.round_line: 100 columns with the terminal's progress bar) ...
        log(INFO, "%s", console.round_line(
            server_round, self.num_rounds, {**entry, "unchanged": train.get("aggregated") is False}, epsilons,
            {"trained": trained, "rejected": rejected, "failed": failed}, clock),
            extra=console.progress(server_round, self.num_rounds))
        # ... and every figure in run.log (on the console too with --verbose).
        log(INFO, "[fedemo] details of round %d/%d:  loss %.4f  accuracy %.3f  macro-F1 %.3f  UAR %.3f%s  "
            "(%d clients trained, %d rejected, %d evaluated on %d samples%s, %d failures)  %s",
            server_round, self.num_rounds, entry["loss"] or float("nan"), entry["accuracy"], entry["macro_f1"],
            entry["uar"], extra, trained, rejected, len(entry["evaluate"]["clients"]), entry["eval_examples"],
            " (a noised, unclipped count)" if entry.get("groups_dp") else "", failed, clock,
            extra=console.detail())

    def eval_epsilons(self) -> dict[str, float]:
        """Each client's latest evaluation-count epsilon (noised counts; separate from its training epsilon)."""
        latest: dict[str, float] = {}
        for entry in self.history:
            latest.update((entry.get("groups_dp") or {}).get("epsilon_by_client") or {})
        return latest

    def trained_rounds(self, minimum: int) -> int:
        """Rounds that aggregated at least ``minimum`` accepted updates."""
        return sum(1 for e in self.history[1:] if e["train"] and e["train"].get("aggregated", True)
                   and len(e["train"].get("clients", [])) >= minimum)

    def reasons_by_client(self) -> dict[str, str]:
        """The latest reason each client did not contribute (failures by node, rejections by client id)."""
        reasons: dict[str, str] = {}
        for entry in self.history[1:]:
            train = entry["train"] or {}
            for f in train.get("failures", []):
                reasons[f"client {f['client']}" if "client" in f else f"node {f['node_id']}"] = f["reason"]
            for r in train.get("rejected", []):
                reasons[f"client {r['client']}"] = r["reason"]
        return reasons

    def summary(self) -> dict:
        def headline(entry: dict) -> dict:
            keys = ("round", "loss", "accuracy", "macro_f1", "uar", "ccc_valence", "ccc_arousal", "eval_examples")
            return {k: entry[k] for k in keys if k in entry}

        privacy = {}
        if self.privacy:
            privacy = {"max_epsilon": max(p["epsilon"] for p in self.privacy.values()), "clients": self.privacy}
        evaluation = self.eval_epsilons()
        if evaluation:  # the evaluation-count epsilons: test records, add/remove, their own account
            privacy.update(max_eval_epsilon=max(evaluation.values()), eval_epsilons=evaluation)
        if self.central is not None:
            privacy["central_dp"] = self.central.spent()
        rejected = sum(len((e["train"] or {}).get("rejected", [])) for e in self.history)
        return {
            "privacy": privacy,
            "rounds": max(len(self.history) - 1, 0),  # stopped before round 0 was evaluated: none
            "planned_rounds": self.num_rounds,
            "rejected_updates": rejected,
            "elapsed_s": round(time.time() - self.record.started, 2),
            "initial": headline(self.history[0]) if self.history else {},
            "final": headline(self.history[-1]) if self.history else {},
        }
