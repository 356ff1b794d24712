"""FedEmo ServerApp: the coordinator (Flower Message API, FedAvg).

One run, in order:

1. parse and check the run config (a bad key stops the run here, by name);
2. in a simulation, make sure the dataset folder exists (writing the embedded
   synthetic dataset when it is empty and ``synthesize-if-missing`` is on);
3. for audio tasks, build the global log-mel normalisation from the nodes'
   per-band sums and counts (a ``query`` round), stored in the model's buffers;
4. evaluate the initial model on every node (round 0, the baseline to beat);
5. run FedAvg for ``num-server-rounds``, logging one line per round to
   ``runs/<run-id>/metrics.jsonl``; save the final weights.
"""

from __future__ import annotations

import random
import time
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedAvgM
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.central_dp import wrap_strategy
from server.global_metrics import aggregate_evaluation
from server.report import coordinator_key, report_at_end_of_run
from server.run_record import RunRecord, evaluation_summary, new_run_id, training_summary
from server.secure_aggregation import run_secure_aggregation
from shared_models.audio_features import combine_moments
from shared_models.registry import build_model, count_parameters
from shared_models.run_settings import UPDATE_WEIGHT_KEY, RunSettings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_config(context.run_config)
    # Flower samples clients with `random` (reproducible: client-level DP claims no amplification by
    # sampling). numpy's global generator is never seeded: Flower draws client-level DP noise from it,
    # and server/central_dp.py reseeds it from the OS for each noised release anyway.
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    signing_key = coordinator_key(settings.signing_key, settings.runs_dir)  # unusable key: stop before training

    data_dir = prepare_data_dir(settings)
    run_id = new_run_id(settings.run_name)
    record = RunRecord.create(Path(settings.runs_dir).resolve(), run_id, settings.to_config(),
                              {"data_dir": str(data_dir or ""), "flower_run_id": context.run_id})
    log(INFO, "FedEmo run %s: task=%s dataset=%s (%s) model=%s, writing to %s", run_id, settings.task,
        settings.dataset, data_dir, settings.model, record.run_dir)

    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    log(INFO, "Model %s: %d parameters", settings.model, count_parameters(model))
    # Shared folders of a simulation, resolved once here: the dataset and the nodes' ledgers.
    node_config = ConfigRecord({"data-dir": str(data_dir), "state-root": str(record.run_dir / "node-state")})
    if data_dir is None:  # deployment: every node reads its own data-path (node config); none is sent
        del node_config["data-dir"]
    if settings.task in ("voice", "fusion") and settings.federated_normalisation:
        mean, std = global_feature_stats(grid, settings, node_config)
        model.set_feature_stats(torch.as_tensor(mean), torch.as_tensor(std))
    elif settings.task in ("voice", "fusion"):  # data-independent: nothing about any node's audio is released
        n_mels = next(v.numel() for k, v in model.state_dict().items() if k.endswith("feature_mean"))
        model.set_feature_stats(torch.full((n_mels,), settings.feature_fixed_mean),
                                torch.full((n_mels,), settings.feature_fixed_std))
        log(INFO, "Fixed log-mel normalisation: mean %.1f dB, std %.1f dB in every band (no node is queried)",
            settings.feature_fixed_mean, settings.feature_fixed_std)

    # Plain FedAvg unless server momentum is asked for: Flower's client-level DP accounting accepts only
    # FedAvg's own aggregation (and server-momentum is refused with central-dp).
    momentum = {"server_momentum": settings.server_momentum} if settings.server_momentum > 0 else {}
    strategy = (FedAvgM if momentum else FedAvg)(
        **momentum,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=settings.min_available_nodes,
        evaluate_metrics_aggr_fn=aggregate_evaluation,
        # Client-level DP needs equal weights: one node's influence must be bounded by the clipping norm alone.
        weighted_by_key=UPDATE_WEIGHT_KEY if settings.central_dp != "off" else "num-examples",
    )
    rounds = RoundLog(record, settings.num_server_rounds)
    rounds.attach(strategy)
    initial = ArrayRecord(model.state_dict())

    # Round 0: the untrained global model, evaluated on every node, is the baseline to beat.
    replies = list(grid.send_and_receive(strategy.configure_evaluate(0, initial, ConfigRecord(dict(node_config)), grid)))
    strategy.aggregate_evaluate(0, replies)
    if replies and all(r.has_error() for r in replies):
        # Every node failed before any training: the cause is shared (config or data), so stop here.
        raise RuntimeError(f"all {len(replies)} nodes failed to evaluate the initial model; first reason: "
                           f"{replies[0].error.reason}")

    # Client-level central DP wraps FedAvg once the population it samples from is known.
    central = wrap_strategy(strategy, settings, population=len(list(grid.get_node_ids())))
    if central is not None:
        strategy, rounds.central = central.strategy, central

    extra: dict = {}
    if settings.secure_aggregation:  # SecAgg+ runs on Flower's legacy workflow: server/secure_aggregation.py
        final, extra = run_secure_aggregation(grid, context, settings, strategy, rounds, initial, node_config)
    else:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=settings.num_server_rounds,
            train_config=ConfigRecord(dict(node_config)),
            evaluate_config=ConfigRecord(dict(node_config)),
        )
        final = result.arrays if result.arrays is not None else initial  # no round aggregated: keep initial
    weights = record.save_weights(final.to_torch_state_dict())
    summary = {**rounds.summary(), **extra}
    record.write_json("summary.json", summary)
    log(INFO, "FedEmo run %s finished in %.1f s: accuracy %.3f (initial %.3f); weights in %s", run_id,
        summary["elapsed_s"], summary["final"].get("accuracy", float("nan")),
        summary["initial"].get("accuracy", float("nan")), weights)
    # The auditor's report (server/report.py): per-group figures, privacy, signed with the coordinator's key.
    report_at_end_of_run(record.run_dir, signing_key)


def prepare_data_dir(settings: RunSettings) -> Path | None:
    """The dataset folder as an absolute path, synthesised first when allowed and empty.

    An empty ``data-dir`` means the coordinator holds no data (a deployment:
    each hospital's node names its own folder); then there is nothing to do.
    """
    if not settings.data_dir:
        return None
    data_dir = Path(settings.data_dir).expanduser().resolve()
    if data_dir.is_dir() and any(data_dir.iterdir()):
        return data_dir
    if not settings.synthesize_if_missing:
        raise FileNotFoundError(
            f"data-dir {data_dir} is missing or empty and synthesize-if-missing is false; "
            f"point data-dir at your {settings.dataset} copy"
        )
    from simulations.synthetic_data import synthesize

    log(INFO, "Writing synthetic %s (%d samples, seed %d) to %s", settings.dataset, settings.synth_samples,
        settings.seed, data_dir)
    started = time.time()
    synthesize(settings.dataset, data_dir, settings.synth_samples, settings.seed, with_faces=settings.task == "fusion")
    log(INFO, "Synthetic data written in %.1f s", time.time() - started)
    return data_dir


def global_feature_stats(grid: Grid, settings: RunSettings, node_config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-band mean/std of all nodes' training audio, from their sums and counts."""
    node_ids, _ = sample_nodes(grid, settings.min_available_nodes, len(list(grid.get_node_ids())))
    config = ConfigRecord({**dict(node_config), "query": "feature-moments"})
    messages = [Message(content=RecordDict({"config": config}), dst_node_id=nid, message_type=MessageType.QUERY)
                for nid in node_ids]
    replies = list(grid.send_and_receive(messages))
    moments = []
    for reply in replies:
        if reply.has_error():
            log(WARNING, "Node %d sent no feature moments: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        m = reply.content["metrics"]
        moments.append((np.asarray(m["mel-sum"]), np.asarray(m["mel-sumsq"]), int(m["frames"])))
    if not moments:
        raise RuntimeError("no node returned feature moments; cannot normalise audio features")
    log(INFO, "Global feature normalisation from %d of %d nodes", len(moments), len(replies))
    return combine_moments(moments)


class RoundLog:
    """Hooks a Flower strategy's aggregation to write one metrics.jsonl line per round.

    It wraps the strategy's own ``aggregate_train``/``aggregate_evaluate``
    (the aggregation itself is untouched) to see every reply, including
    failures, which Flower's aggregated MetricRecord would hide.
    """

    def __init__(self, record: RunRecord, num_rounds: int):
        self.record = record
        self.num_rounds = num_rounds
        self.pending_train: dict[int, dict] = {}
        self.history: list[dict] = []
        self.privacy: dict[str, dict] = {}  # client -> its latest DP report (epsilon spent so far, ...)
        self.central = None  # server.central_dp.CentralDP when client-level DP is on

    def attach(self, strategy) -> None:
        aggregate_train, aggregate_evaluate = strategy.aggregate_train, strategy.aggregate_evaluate

        def train_hook(server_round, replies):
            replies = list(replies)
            self.pending_train[server_round] = training_summary(replies)
            return aggregate_train(server_round, replies)

        def evaluate_hook(server_round, replies):
            replies = list(replies)
            self.log(server_round, evaluation_summary(replies))
            return aggregate_evaluate(server_round, replies)

        strategy.aggregate_train, strategy.aggregate_evaluate = train_hook, evaluate_hook

    def log(self, server_round: int, evaluation: dict) -> None:
        entry = {"round": server_round, **evaluation, "train": self.pending_train.pop(server_round, None)}
        if self.central is not None:  # client-level spend after this round's release
            entry["central_dp"] = self.central.spent()
        for client in (entry["train"] or {}).get("clients", []):
            if "dp" in client:
                self.privacy[client["client"]] = client["dp"]
        self.record.log_round(entry)
        self.history.append(entry)
        trained = len(entry["train"]["clients"]) if entry["train"] else 0
        failed = len(entry["evaluate"]["failures"]) + (len(entry["train"]["failures"]) if entry["train"] else 0)
        extra = ""
        if "ccc_valence" in entry:
            extra = f" ccc-v {entry['ccc_valence']:.3f} ccc-a {entry['ccc_arousal']:.3f}"
        if self.privacy:
            extra += f"  max client epsilon {max(p['epsilon'] for p in self.privacy.values()):.3f}"
        if "central_dp" in entry:
            extra += f"  client-level epsilon {entry['central_dp']['epsilon']:.3f}"
        log(INFO, "[fedemo] round %d/%d  loss %.4f  accuracy %.3f  macro-F1 %.3f  UAR %.3f%s  "
            "(%d clients trained, %d evaluated on %d samples, %d failures)",
            server_round, self.num_rounds, entry["loss"] or float("nan"), entry["accuracy"], entry["macro_f1"],
            entry["uar"], extra, trained, len(entry["evaluate"]["clients"]), entry["eval_examples"], failed)

    def summary(self) -> dict:
        def headline(entry: dict) -> dict:
            keys = ("round", "loss", "accuracy", "macro_f1", "uar", "ccc_valence", "ccc_arousal", "eval_examples")
            return {k: entry[k] for k in keys if k in entry}

        privacy = {}
        if self.privacy:
            privacy = {"max_epsilon": max(p["epsilon"] for p in self.privacy.values()), "clients": self.privacy}
        if self.central is not None:
            privacy["central_dp"] = self.central.spent()
        return {
            "privacy": privacy,
            "rounds": len(self.history) - 1,
            "elapsed_s": round(time.time() - self.record.started, 2),
            "initial": headline(self.history[0]) if self.history else {},
            "final": headline(self.history[-1]) if self.history else {},
        }
