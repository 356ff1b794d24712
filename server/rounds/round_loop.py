"""The round loop: Flower's ``Strategy.start`` loop, resumable, interruptible and checkpointed.

Drives the same strategy methods (possibly wrapped by Flower's DP wrappers) from any first round, screens
training replies before the strategy aggregates them, waits with the Grid's push/pull while watching for a
stop request, writes a checkpoint after each round, and lets the divergence guard stop the run. Each
exchange waits at most ``round-timeout`` (0: sized from round 1 as max(60 s, 5x the half-replied time));
late nodes are recorded as timeouts and the round goes on. Details: docs/design_notes.md.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from server.rounds import interruption
from server.record.checkpoint import Checkpoint
from server.rounds.divergence_guard import DivergenceGuard
from server.record.round_recorder import RoundRecorder
from server.aggregation.strategy import FedEmoMixin

POLL_S = 0.1
FIRST_ROUND_TIMEOUT_S = 3600.0  # round-timeout = 0: the deadline until a first round has been timed
MIN_TIMEOUT_S, TIMEOUT_FACTOR = 60.0, 5.0  # round-timeout = 0: max(60 s, 5 x round 1's half-reply time)


class Interrupted(Exception):
    """A stop was requested while the round was running."""


@dataclass
class RoundsOutcome:
    arrays: ArrayRecord  # the global weights after the last completed round
    last_round: int  # the last completed round (0: none)
    interrupted: bool = False
    diverged: dict | None = None  # the divergence guard's verdict (the weights are then the best round's)


@dataclass
class RoundDeadline:
    """How long a round waits for replies: ``round-timeout`` seconds, or (0) sized from the first training
    round: max(60 s, 5 x the time by which half of its nodes had replied). The half, not the last: a node
    that sleeps through the first round would otherwise size every deadline after it."""

    configured: float = 0.0
    half_reply_s: float | None = None  # round 1: seconds until half the sampled nodes had replied

    def seconds(self) -> float:
        if self.configured:
            return self.configured
        if self.half_reply_s is None:
            return FIRST_ROUND_TIMEOUT_S
        return max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * self.half_reply_s)

    def half_replied(self, seconds: float) -> float:
        """Half the nodes of a training round replied after ``seconds``: the first time sizes the deadline.
        Returns the round's deadline in seconds from its start."""
        if self.half_reply_s is None and not self.configured:
            self.half_reply_s = seconds
        return self.seconds()


def exchange(grid: Grid, messages: Iterable[Message], timeout: float,
             on_reply: Callable[[Message], None] | None = None, late: list[int] | None = None,
             sizing: RoundDeadline | None = None) -> list[Message]:
    """Send and collect the replies, like ``Grid.send_and_receive``, but stop at once on a stop request;
    ``on_reply`` sees each reply as it arrives (while the other nodes still work); ``late`` receives the
    node ids that had not replied by the deadline; ``sizing`` (a training round's) learns when half the
    nodes had replied and may shorten this round's deadline with it."""
    messages = list(messages)
    pending = set(grid.push_messages(messages))
    node_of = dict(zip([m.metadata.message_id for m in messages], [m.metadata.dst_node_id for m in messages]))
    replies: list[Message] = []
    started = time.time()
    deadline = started + timeout
    while pending and time.time() < deadline:
        if interruption.stop_requested():
            raise Interrupted(interruption.stop_reason())
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        if on_reply is not None:
            for reply in got:
                on_reply(reply)
        pending.difference_update(r.metadata.reply_to_message_id for r in got)
        if sizing is not None and got and 2 * len(replies) >= len(node_of):
            deadline = min(deadline, started + sizing.half_replied(time.time() - started))
            sizing = None
        if pending:  # the grid's own interval when it has one (in simulation: 20 ms, an in-memory lookup)
            time.sleep(min(POLL_S, getattr(grid, "pull_interval", POLL_S)))
    if late is not None:
        late.extend(sorted(node_of.get(m, -1) for m in pending))
    return replies


def evaluate_round(strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                   timeout: float, recorder: RoundRecorder | None = None) -> list[Message]:
    """One federated evaluation of ``arrays`` (round 0: the initial model); returns the replies."""
    late: list[int] = []
    replies = exchange(grid, strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid),
                       timeout, late=late)
    if late and recorder is not None and recorder.has_train(server_round):
        recorder.train_of(server_round)["evaluate_timeouts"] = timeouts(recorder, late, timeout)
    strategy.aggregate_evaluate(server_round, replies)
    return replies


def timeouts(recorder: RoundRecorder, late: list[int], timeout: float) -> list[dict]:
    """The round record's entries for nodes that missed the deadline (by client id when one is known)."""
    out = []
    for node in late:
        entry = {"node_id": node, "reason": f"no reply within the round deadline of {timeout:.0f} s (round-timeout)"}
        if node in recorder.client_of_node:
            entry["client"] = recorder.client_of_node[node]
        out.append(entry)
        log(WARNING, "[fedemo] %s did not reply within %.0f s (round-timeout); the round goes on without it",
            f"client {entry['client']}" if "client" in entry else f"node {node}", timeout)
    return out


def run_rounds(strategy, fedemo: FedEmoMixin, recorder: RoundRecorder, grid: Grid, arrays: ArrayRecord, *,
               first_round: int, num_rounds: int, config: ConfigRecord, run_dir,
               deadline: RoundDeadline | None = None, guard: DivergenceGuard | None = None) -> RoundsOutcome:
    """Rounds ``first_round``..``num_rounds`` of ``strategy`` (``fedemo`` is the FedEmo strategy inside it)."""
    last, done = first_round - 1, arrays
    deadline = deadline or RoundDeadline()
    guard = guard or DivergenceGuard(0)
    try:
        for server_round in range(first_round, num_rounds + 1):
            timeout, late = deadline.seconds(), []
            messages = strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)
            replies = fedemo.screen_train_replies(server_round, exchange(grid, messages, timeout,
                                                                        on_reply=fedemo.inspect_train_reply,
                                                                        late=late, sizing=deadline))
            timeout = deadline.seconds()  # sized by now when round-timeout = 0
            if late:
                recorder.train_of(server_round)["timeouts"] = timeouts(recorder, late, timeout)
            new_arrays, _ = strategy.aggregate_train(server_round, replies)  # Flower's (or its DP wrapper's)
            if new_arrays is None:
                recorder.mark_not_aggregated(server_round, _why_not(recorder, server_round))
            else:
                arrays = new_arrays
            evaluate_round(strategy, grid, server_round, arrays, config, timeout, recorder)
            reason = guard.observe(server_round, recorder.history[-1], arrays)
            if reason is not None:  # no checkpoint of the diverged round: the run ends on the best weights
                log(WARNING, "[fedemo] the run diverged: %s; rolling back to round %d's weights", reason,
                    guard.best_round)
                best = guard.best_arrays if guard.best_arrays is not None else done
                return RoundsOutcome(best, server_round, diverged=guard.verdict(reason, server_round))
            Checkpoint(server_round, arrays, fedemo.server_state(), random.getstate(), recorder.history,
                       recorder.privacy, recorder.central.state() if recorder.central else {}).save(run_dir)
            last, done = server_round, arrays
    except Interrupted:  # the interrupted round's work is dropped: the outcome is the last checkpoint's
        return RoundsOutcome(done, last, interrupted=True)
    return RoundsOutcome(done, last)


def _why_not(recorder: RoundRecorder, server_round: int) -> str:
    entry = recorder.train_of(server_round)
    accepted, rejected = len(entry.get("clients", [])), len(entry.get("rejected", []))
    failed = len(entry.get("failures", []))
    if not accepted:
        return f"no valid update to aggregate ({rejected} rejected, {failed} failed)"
    return f"the aggregation returned no model from {accepted} accepted updates (too few for it?)"
