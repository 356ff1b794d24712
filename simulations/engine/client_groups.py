"""A worker's group of train messages: each node's message and reply as alone, their training batched.

The local backend (``vectorised-clients = true``) hands a worker the train messages of several of its nodes that
arrived together. Each message runs through the ClientApp exactly as alone (its mods, settings, data, global
weights, loader, consent log, reply and DP allowlist) in a thread of its own, the threads preparing one at a
time; only the local training step is pooled: the ClientApp's training runner (client/client_app.py ``set_training_runner``) hands each node's prepared
training to a ``TrainingRendezvous``, which, once every member has handed its training in or finished without
one, trains them as one vectorised computation (simulations/engine/vectorised_clients.py; under DP
simulations/engine/vectorised_dp.py, each node with its own private step, Poisson loader, noise generator and
ledger) and gives each node its own weights and metrics back. A node whose training carries the audit's step
observer trains alone (its canaries need its own steps). Details: docs/design_notes.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from client.client_app import LocalTraining, set_training_runner
from client.local_training import STEP_OBSERVER
from shared_models.models.registry import build_model
from simulations.engine.vectorised_clients import epoch_batches, optimiser_spec, train_clients
from simulations.engine.vectorised_dp import PrivateClient, private_batches, train_private_clients

Outcome = tuple[str, Any]  # ("ok", (reply, context)) | ("error", reason): what a worker sends back per message


@dataclass
class _Slot:
    training: LocalTraining
    batches: list[tuple]
    order: int = 0  # the message's place in the group: the batched computation's order, whatever the threads' turns
    metrics: dict[str, float] | None = None
    error: BaseException | None = None


def _group_key(training: LocalTraining) -> tuple:
    """Trainings that can share one vectorised computation: same architecture, optimiser, inputs and device
    (under DP each node steps its own optimizer, so the optimiser is not in the key)."""
    s = training.settings
    if training.private is not None:
        return ("dp", s.model, s.valence_arousal, training.n_inputs, str(training.device))
    return (s.model, s.valence_arousal, optimiser_spec(s), training.n_inputs, str(training.device))


def _train_private(members: list[_Slot]) -> None:
    first = members[0].training
    template = build_model(first.settings.model, valence_arousal=first.settings.valence_arousal)
    metrics = train_private_clients(template, [PrivateClient(m.training.private, m.batches) for m in members],
                                    n_inputs=first.n_inputs, device=first.device)
    for member, m in zip(members, metrics):
        if isinstance(m, Exception):
            member.error = m  # this node's own step failed (as it would alone); the others trained
        else:
            member.metrics = m


def train_together(slots: list[_Slot]) -> None:
    """Train every slot's model in one vectorised computation per group key; fill in metrics (or the error)."""
    groups: dict[tuple, list[_Slot]] = {}
    for slot in sorted(slots, key=lambda s: s.order):  # a run repeats its float sums: same order every time
        groups.setdefault(_group_key(slot.training), []).append(slot)
    for members in groups.values():
        first = members[0].training
        try:
            if first.private is not None:
                _train_private(members)
                continue
            trained = train_clients([m.training.model for m in members], [m.batches for m in members],
                                    optimiser_spec(first.settings), n_inputs=first.n_inputs, device=first.device)
            for member, (state, metrics) in zip(members, trained):
                member.training.model.load_state_dict(state)
                member.metrics = metrics
        except Exception as err:  # noqa: BLE001 - each member's node answers with the error
            for member in members:
                member.error = err


@dataclass
class TrainingRendezvous:
    """Collects the members' prepared trainings; the member that completes the group trains them all."""

    members: int
    train: Callable[[list[_Slot]], None] = train_together
    _pending: int = field(init=False)
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _done: bool = field(default=False, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)

    def __post_init__(self) -> None:
        self._pending = self.members

    def hand_in(self, training: LocalTraining, order: int = 0) -> _Slot:
        """A member's prepared training: draw its batches (loader order and augmentation as alone; under DP its
        Poisson batches, empty ones too, from its own secret generator) and queue it."""
        try:
            draw = private_batches if training.private is not None else epoch_batches
            slot = _Slot(training, draw(training.loader, training.settings.local_epochs), order)
        except BaseException:
            self._arrive()
            raise
        with self._cond:
            self._slots.append(slot)
        self._arrive()
        return slot

    def result(self, slot: _Slot) -> dict[str, float]:
        """Wait for the group's training; this node's metrics (its trained weights are in its model)."""
        with self._cond:
            self._cond.wait_for(lambda: self._done)
        if slot.error is not None:
            raise RuntimeError(f"vectorised local training failed: {slot.error}") from slot.error
        return slot.metrics  # type: ignore[return-value]

    def withdraw(self) -> None:
        """A member finished (or failed) without handing in a training: the group no longer waits for it."""
        self._arrive()

    def _arrive(self) -> None:
        with self._cond:
            self._pending -= 1
            last = self._pending == 0
        if last:
            try:
                if self._slots:
                    self.train(self._slots)
            finally:
                with self._cond:
                    self._done = True
                    self._cond.notify_all()


def run_group(app: Callable[..., Any], requests: list[tuple[Any, Any]],
              train: Callable[[list[_Slot]], None] = train_together) -> list[Outcome]:
    """Answer each (message, context) through ``app`` in its own thread, their local training batched.

    The members prepare one at a time (``turn``: each node's data loading, caches and logs as in a loop over
    the messages, and no more threads at work than one), up to handing in their training or finishing
    without one; the batched training follows, then every member finishes its reply.
    """
    rendezvous = TrainingRendezvous(len(requests), train)
    turn = threading.Lock()
    outcomes: list[Outcome] = [("error", "the node's thread did not finish")] * len(requests)

    def member(i: int, message: Any, context: Any) -> None:
        holding = True
        handed_in = False

        def runner(training: LocalTraining) -> dict[str, float]:
            nonlocal holding, handed_in
            if STEP_OBSERVER.get() is not None:  # the audit's canaries ride this node's own steps: it trains alone
                return training.run()
            handed_in = True
            try:
                slot = rendezvous.hand_in(training, i)
            finally:
                holding = False
                turn.release()
            return rendezvous.result(slot)

        turn.acquire()
        set_training_runner(runner)
        try:
            reply = app(message=message, context=context)
            outcomes[i] = ("ok", (reply, context))
        except Exception as err:  # noqa: BLE001 - one node's failure is its own error reply, as alone
            outcomes[i] = ("error", str(err) or type(err).__name__)
        finally:
            set_training_runner(None)
            if not handed_in:
                rendezvous.withdraw()
            if holding:
                turn.release()

    threads = [threading.Thread(target=member, args=(i, m, c), name=f"node-{i}") for i, (m, c) in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
