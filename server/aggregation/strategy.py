"""FedEmo's strategy: Flower's aggregation, with every training reply screened and every round recorded.

``aggregation`` picks Flower's own aggregator (FedAvg/FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum,
Bulyan; "auto": a trimmed mean from 5 nodes); ``FedEmoMixin`` adds the reply screen, the round recorder and
saving the server optimiser's state. The round loop screens before the strategy it drives, so under
client-level DP Flower's DP wrapper sees only sound updates and a screened-out node holds a zero update
(no verdict changes whether or at what cost a round is released). Details: docs/design_notes.md.
"""

from __future__ import annotations

from logging import INFO
from typing import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from server.aggregation.flower_strategy_seam import (momentum_state, restore_momentum_state, train_metrics,
                                                     valid_train_replies)
from server.rounds.global_metrics import aggregate_evaluation
from server.record.round_recorder import RoundRecorder
from server.aggregation.robust_aggregation import chosen_aggregation, nodes_per_round
from server.aggregation.trimmed_mean import trimmed_mean
from server.aggregation.update_checks import UpdatePolicy, global_values, inspect, model_spec, screen
from shared_models import messages as msgs
from shared_models.settings.run_settings import UPDATE_WEIGHT_KEY, RunSettings


class FedEmoMixin:
    """Screening, recording and optimiser state for any Flower aggregator (mixed in before it)."""

    def __init__(self, *, recorder: RoundRecorder, policy: UpdatePolicy, template: ArrayRecord, **flower_kwargs):
        super().__init__(**flower_kwargs)
        self.recorder = recorder
        self.policy = policy
        self.spec = model_spec(template)  # names, shapes, dtypes every reply must match
        self._round, self._global = 0, template
        self._global_values, self._inspected = None, {}  # this round's checks taken as replies arrived
        self._updates: dict[str, np.ndarray] = {}  # their flat updates, for the direction check (by message id)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round, self._global = server_round, arrays  # what this round's updates are measured from
        self._global_values, self._inspected, self._updates = None, {}, {}
        return super().configure_train(server_round, arrays, config, grid)

    def inspect_train_reply(self, reply: Message) -> None:
        """Check one training reply as it arrives (its verdict waits for ``screen_train_replies``)."""
        if reply.has_error():
            return
        if self._global_values is None:
            self._global_values = global_values(self._global)
        kept: list[np.ndarray] | None = [] if self.policy.min_cosine > -1.0 else None  # no direction check: none kept
        self._inspected[reply.metadata.message_id] = inspect(reply, self._global_values, self.spec, self.policy, kept)
        if kept:
            self._updates[reply.metadata.message_id] = kept[0]

    def screen_train_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies fit to aggregate (and those that failed); the round record gets the rejected ones."""
        notes: dict[str, dict] = {}
        passed, rejected, norms = screen(replies, self._global, self.spec, self.policy, self._inspected,
                                         reference_norm=accepted_norm_median(self.recorder.history), notes=notes,
                                         updates=self._updates)
        self._updates = {}  # those of rejected or unchecked replies: freed with the round
        self.recorder.train_replies(server_round, passed, rejected, norms)
        # weights_clipped ({client: [claimed, used]}) and update_cosines ({client: cosine to the median update})
        self.recorder.train_of(server_round).update(notes)
        return passed

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        self.recorder.evaluation_replies(server_round, replies)
        return super().aggregate_evaluate(server_round, replies)

    def server_state(self) -> dict[str, list[np.ndarray]]:
        """The server optimiser's state to checkpoint (none for stateless aggregators)."""
        return {}

    def load_server_state(self, arrays: ArrayRecord, state: dict[str, list[np.ndarray]]) -> None:
        """Continue from a checkpoint whose global weights are ``arrays``."""


def accepted_norm_median(history: list[dict]) -> float:
    """The median norm of the updates accepted in the rounds so far (0: none yet): ``update-norm-growth``'s unit.

    Read from the round records (checkpointed), so a resumed run keeps the same cap.
    """
    norms = []
    for entry in history[1:]:
        train = entry.get("train") or {}
        by_client = train.get("update_norms") or {}
        norms += [by_client[c["client"]] for c in train.get("clients", []) if c["client"] in by_client]
    return float(np.median(norms)) if norms else 0.0


class FedEmoFedAvg(FedEmoMixin, FedAvg):
    pass


class FedEmoFedAvgM(FedEmoMixin, FedAvgM):
    """FedAvgM: the momentum vector and the weights it was applied to are its state."""

    def server_state(self) -> dict[str, list[np.ndarray]]:
        return momentum_state(self)

    def load_server_state(self, arrays: ArrayRecord, state: dict[str, list[np.ndarray]]) -> None:
        restore_momentum_state(self, arrays, state)


class FedEmoFedMedian(FedEmoMixin, FedMedian):
    pass


class FedEmoFedTrimmedAvg(FedEmoMixin, FedTrimmedAvg):
    """Flower's FedTrimmedAvg with the trimmed mean from one sort (server/aggregation/trimmed_mean.py): the same
    replies, arrays and metrics as Flower 1.41's ``aggregate_train`` (tests/test_flower_seams.py watches it)."""

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = valid_train_replies(self, replies)
        if not valid:
            return None, None
        record_key = next(iter(valid[0].content.array_records))
        arrays = ArrayRecord()
        for array_key in list(valid[0].content[record_key].keys()):
            layers = [msg.content[record_key].pop(array_key).numpy() for msg in valid]  # freed as Flower frees them
            arrays[array_key] = Array(np.asarray(trimmed_mean(np.stack(layers), self.beta)))
        return arrays, train_metrics(self, valid)


class FedEmoKrum(FedEmoMixin, Krum):
    pass


class FedEmoMultiKrum(FedEmoMixin, MultiKrum):
    pass


class FedEmoBulyan(FedEmoMixin, Bulyan):
    pass


def build_strategy(settings: RunSettings, recorder: RoundRecorder, template: ArrayRecord) -> FedEmoMixin:
    """The run's strategy from its ``aggregation`` (and ``server-momentum``) keys."""
    # Client-level DP needs equal weights: one node's influence must be bounded by the clipping norm alone.
    weight_key = UPDATE_WEIGHT_KEY if settings.central_dp != "off" else msgs.NUM_EXAMPLES
    common = dict(
        recorder=recorder, policy=UpdatePolicy.from_settings(settings, weight_key), template=template,
        fraction_train=settings.fraction_train, fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=settings.min_available_nodes,
        evaluate_metrics_aggr_fn=aggregate_evaluation,
        weighted_by_key=weight_key,
    )
    f = settings.robust_malicious_nodes
    aggregation, why = chosen_aggregation(settings)
    log(INFO, "Aggregation %s (%s)", aggregation, why)
    match aggregation:
        case "fedavg" if settings.server_momentum > 0:
            return FedEmoFedAvgM(server_momentum=settings.server_momentum, **common)
        case "fedavg":  # Flower's client-level DP accounting accepts only FedAvg's own aggregate_train
            return FedEmoFedAvg(**common)
        case "fedmedian":
            return FedEmoFedMedian(**common)
        case "fedtrimmedavg":
            return FedEmoFedTrimmedAvg(beta=settings.robust_trim_beta, **common)
        case "krum":
            return FedEmoKrum(num_malicious_nodes=f, **common)
        case "multikrum":  # average the n - f updates Krum scores best
            sampled = nodes_per_round(settings)
            return FedEmoMultiKrum(num_malicious_nodes=f, num_nodes_to_select=max(sampled - f, 1), **common)
        case "bulyan":
            return FedEmoBulyan(num_malicious_nodes=f, **common)
    raise ValueError(f"unknown aggregation {aggregation!r}")  # RunSettings.validate refuses it first
