"""The round loop: Flower's ``Strategy.start`` loop, resumable, interruptible and checkpointed.

``Strategy.start`` always runs rounds 1..N in memory, waits on
``send_and_receive`` without a way to stop, and keeps nothing when the
process dies. This loop drives the same strategy methods
(``configure_train``, ``aggregate_train``, ``configure_evaluate``,
``aggregate_evaluate``: the strategy may be wrapped by Flower's DP wrappers)
from any first round, screens the training replies with the FedEmo strategy
before the (possibly wrapped) strategy aggregates them (server/strategy.py
says why there), waits for replies with the Grid's own
``push_messages``/``pull_messages`` while watching for a stop request
(server/interruption.py), and after each completed round writes a checkpoint
(server/checkpoint.py).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from server import interruption
from server.checkpoint import Checkpoint
from server.round_recorder import RoundRecorder
from server.strategy import FedEmoMixin

POLL_S = 0.1


class Interrupted(Exception):
    """A stop was requested while the round was running."""


@dataclass
class RoundsOutcome:
    arrays: ArrayRecord  # the global weights after the last completed round
    last_round: int  # the last completed round (0: none)
    interrupted: bool = False


def exchange(grid: Grid, messages: Iterable[Message], timeout: float,
             on_reply: Callable[[Message], None] | None = None) -> list[Message]:
    """Send and collect the replies, like ``Grid.send_and_receive``, but stop at once on a stop request;
    ``on_reply`` sees each reply as it arrives (while the other nodes still work)."""
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.time() + timeout
    while pending and time.time() < deadline:
        if interruption.stop_requested():
            raise Interrupted(interruption.stop_reason())
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        if on_reply is not None:
            for reply in got:
                on_reply(reply)
        pending.difference_update(r.metadata.reply_to_message_id for r in got)
        if pending:  # the grid's own interval when it has one (in simulation: 20 ms, an in-memory lookup)
            time.sleep(min(POLL_S, getattr(grid, "pull_interval", POLL_S)))
    return replies


def evaluate_round(strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                   timeout: float) -> list[Message]:
    """One federated evaluation of ``arrays`` (round 0: the initial model); returns the replies."""
    replies = exchange(grid, strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid),
                       timeout)
    strategy.aggregate_evaluate(server_round, replies)
    return replies


def run_rounds(strategy, fedemo: FedEmoMixin, recorder: RoundRecorder, grid: Grid, arrays: ArrayRecord, *,
               first_round: int, num_rounds: int, config: ConfigRecord, run_dir, timeout: float = 3600
               ) -> RoundsOutcome:
    """Rounds ``first_round``..``num_rounds`` of ``strategy`` (``fedemo`` is the FedEmo strategy inside it)."""
    last, done = first_round - 1, arrays
    try:
        for server_round in range(first_round, num_rounds + 1):
            messages = strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)
            replies = fedemo.screen_train_replies(server_round, exchange(grid, messages, timeout,
                                                                        on_reply=fedemo.inspect_train_reply))
            new_arrays, _ = strategy.aggregate_train(server_round, replies)  # Flower's (or its DP wrapper's)
            if new_arrays is None:
                recorder.mark_not_aggregated(server_round, _why_not(recorder, server_round))
            else:
                arrays = new_arrays
            evaluate_round(strategy, grid, server_round, arrays, config, timeout)
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
