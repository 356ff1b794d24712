"""The coordinator's side of secure aggregation: Flower's SecAgg+ driven from our Message-API ServerApp.

Flower 1.41 has SecAgg+ only on its legacy path, so its ``DefaultWorkflow`` runs inside our ``@app.main()``.
The coordinator sees only the weighted average of the nodes' clipped updates (``UpdateFedAvg`` adds it to
the global weights); metrics travel in the clear beside the masked vectors, as in Flower's own mod.
Evaluation is our own evaluate round, so records and metrics are those of a plain run.
"""

from __future__ import annotations

from collections import OrderedDict
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from server.rounds import interruption
from server.record.round_recorder import RoundRecorder
from server.rounds.round_loop import Interrupted
from server.record.run_record import training_summary
from shared_models import messages as msgs
from shared_models.settings.privacy_modes import MIN_SECAGG_NODES
from shared_models.settings.run_settings import RunSettings

MODULUS_RANGE = 2**32  # Flower's default mask modulus; validate() keeps nodes x quantization range below it
PROTOCOL = "SecAgg+ (Flower 1.41 legacy SecAggPlusWorkflow + secaggplus_mod)"


class UpdateFedAvg(LegacyFedAvg):
    """Legacy FedAvg whose clients send updates: the unmasked average is added to this round's global weights.

    It also hands every round's per-node results (metrics only; SecAgg+ has
    already replaced each node's parameters by the aggregate) to ``on_train``.
    """

    def __init__(self, *, template: dict[str, np.dtype], on_train, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dtypes = list(template.values())
        self.on_train = on_train
        self.global_arrays: list[np.ndarray] = []

    def configure_fit(self, server_round, parameters, client_manager):
        self.global_arrays = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        self.on_train(server_round, results, failures)
        aggregated, _ = super().aggregate_fit(server_round, results, failures)
        if aggregated is None:
            return None, {}
        update = parameters_to_ndarrays(aggregated)
        new = [_as_dtype(g + u, dtype) for g, u, dtype in zip(self.global_arrays, update, self.dtypes)]
        return ndarrays_to_parameters(new), {}


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the weight's own dtype; integer buffers are rounded, not truncated (quantisation leaves 1e-9s)."""
    if np.issubdtype(dtype, np.integer):
        values = np.rint(values)
    return values.astype(dtype)


class RecordingSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAgg+ that keeps its round state, so a halted round's failure reasons reach metrics.jsonl."""

    last_state = None

    def setup_stage(self, grid, context, state):
        self.last_state = state
        return super().setup_stage(grid, context, state)


def failure_reasons(failures) -> list[dict[str, Any]]:
    """One entry per failed node (SecAgg+ lists a stage-2 failure twice, as the same Error object)."""
    out, seen = [], set()
    for failure in failures:
        if isinstance(failure, tuple):  # (proxy, FitRes) with a non-OK status
            proxy, res = failure
            out.append({"node_id": proxy.node_id, "reason": res.status.message})
            continue
        error = failure.args[0] if failure.args else failure
        if id(error) in seen:
            continue
        seen.add(id(error))
        out.append({"node_id": None, "reason": str(getattr(error, "reason", error))})
    return out


def _as_message(node_id: int, fitres: FitRes) -> Message:
    """A node's legacy fit metrics as the Message our training_summary reads (numbers vs. labels)."""
    numbers = {k: v for k, v in fitres.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    labels = {k: v for k, v in fitres.metrics.items() if isinstance(v, str)}
    content = RecordDict({msgs.METRICS: MetricRecord(numbers), msgs.CLIENT: ConfigRecord(labels)})
    return Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN)


def run_secure_aggregation(grid: Grid, context: Context, settings: RunSettings, strategy, recorder: RoundRecorder,
                           initial: ArrayRecord, node_config: ConfigRecord) -> tuple[ArrayRecord, dict[str, Any]]:
    """Run ``num-server-rounds`` of FedAvg under SecAgg+; returns the final weights and the summary block.

    ``strategy`` is the run's FedEmo strategy (server/aggregation/strategy.py, recording into
    ``recorder``): it samples and aggregates the evaluation rounds as in a plain run.
    SecAgg+ shows the coordinator only the sum, so no single update can be screened.
    A stop request ends the run after the current round (``"interrupted"`` in the block returned).
    """
    template = initial.to_torch_state_dict()
    names = list(template)
    dtypes = {k: v.numpy().dtype for k, v in template.items()}
    halted: list[int] = []
    clipped: dict[int, int] = {}

    def on_train(server_round, results, failures) -> None:
        messages = [_as_message(proxy.node_id, fitres) for proxy, fitres in results]
        entry = training_summary(messages)
        entry["failures"] = failure_reasons(failures)
        clipped[server_round] = sum(int(fitres.metrics.get(msgs.UPDATE_CLIPPED, 0)) for _, fitres in results)
        entry["secagg"] = {"nodes_aggregated": len(results), "updates_clipped": clipped[server_round]}
        recorder.train_entry(server_round, entry)

    def fit_config(server_round: int) -> dict[str, Any]:
        return {**dict(node_config), msgs.SERVER_ROUND: server_round}

    legacy = UpdateFedAvg(
        template=dtypes, on_train=on_train,
        fraction_fit=settings.fraction_train, fraction_evaluate=0.0,  # evaluation: our own stage below
        min_fit_clients=MIN_SECAGG_NODES, min_evaluate_clients=1,
        min_available_clients=max(settings.min_available_nodes, MIN_SECAGG_NODES),
        on_fit_config_fn=fit_config, accept_failures=True,
        initial_parameters=ndarrays_to_parameters([v.numpy() for v in template.values()]),
    )
    secagg = RecordingSecAggPlusWorkflow(
        num_shares=settings.secagg_num_shares, reconstruction_threshold=settings.secagg_reconstruction_threshold,
        max_weight=settings.secagg_max_weight, clipping_range=settings.secagg_clipping_range,
        quantization_range=settings.secagg_quantization_range, modulus_range=MODULUS_RANGE,
    )
    latest = {"arrays": initial}

    def evaluate_stage(grid: Grid, legacy_context: LegacyContext) -> None:
        """Our Message-API evaluate round on the current global weights; writes the round's metrics.jsonl line."""
        server_round = int(legacy_context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
            legacy_context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))
        latest["arrays"] = ArrayRecord(OrderedDict((n, torch.from_numpy(a)) for n, a in zip(names, arrays)))
        if not recorder.has_train(server_round):  # SecAgg+ stopped before unmasking: nothing aggregated
            halted.append(server_round)
            failures = failure_reasons(secagg.last_state.failures) if secagg.last_state else []
            log(WARNING, "[fedemo] round %d: secure aggregation halted (%d failures); global model unchanged",
                server_round, len(failures))
            recorder.train_entry(server_round, {"clients": [], "failures": failures,
                                                "secagg": {"nodes_aggregated": 0, "halted": True}})
        messages = strategy.configure_evaluate(server_round, latest["arrays"], ConfigRecord(dict(node_config)), grid)
        strategy.aggregate_evaluate(server_round, list(grid.send_and_receive(messages)))
        if interruption.stop_requested():  # a SecAgg+ round cannot be cut short: stop after it
            raise Interrupted(interruption.stop_reason())

    log(INFO, "[fedemo] secure aggregation: %s, clip norm %g, clipping range %g", PROTOCOL,
        settings.secagg_clip_norm, settings.secagg_clipping_range)
    legacy_context = LegacyContext(context, config=ServerConfig(num_rounds=settings.num_server_rounds),
                                   strategy=legacy)
    try:
        DefaultWorkflow(fit_workflow=secagg, evaluate_workflow=evaluate_stage)(grid, legacy_context)
    except Interrupted:
        return latest["arrays"], {"secagg": describe(settings, halted, clipped), "interrupted": True}
    return latest["arrays"], {"secagg": describe(settings, halted, clipped)}


def describe(settings: RunSettings, halted: list[int], clipped: dict[int, int]) -> dict[str, Any]:
    """The summary.json block: what was protected, how, and what the coordinator still saw."""
    return {
        "protocol": PROTOCOL,
        "num_shares": settings.secagg_num_shares,
        "reconstruction_threshold": settings.secagg_reconstruction_threshold,
        "clip_norm": settings.secagg_clip_norm,
        "clipping_range": settings.secagg_clipping_range,
        "quantization_range": settings.secagg_quantization_range,
        "modulus_range": MODULUS_RANGE,
        "max_weight": settings.secagg_max_weight,
        "masked": "each node's clipped model update (new - global weights), weighted by its sample count",
        "in_the_clear": "each node's metrics: sample count, training loss, DP-SGD accounting",
        "rounds_halted": halted,
        "updates_clipped_per_round": {str(r): n for r, n in sorted(clipped.items())},
    }
