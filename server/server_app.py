"""FedEmo ServerApp: the coordinator (Flower Message API), pyproject's ``serverapp``.

``main`` reads as the run's outline: check the run config; open the run folder (or the one ``resume``
names); for audio tasks build the global log-mel normalisation; evaluate the initial model (round 0); run
the rounds (server/rounds/round_loop.py) with the FedEmo strategy, wrapped by central DP or under SecAgg+,
checkpointing each round; save the final weights, the summary and the signed report.
"""

from __future__ import annotations

import random
import shlex
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from server.rounds import console, interruption
from server.privacy.central_dp import wrap_strategy
from server.record.run_lock import hold_run_folder, release_run_folders
from server.record.checkpoint import Checkpoint, CheckpointError, NonFiniteWeights, check_checkpoint_fits, weights_problem
from server.report.build import coordinator_key, report_at_end_of_run
from server.record.round_recorder import RoundRecorder
from server.rounds.divergence_guard import rolled_back_summary, start_guard
from server.aggregation.robust_aggregation import aggregation_record
from server.rounds.round_loop import FIRST_ROUND_TIMEOUT_S, Interrupted, RoundDeadline, RoundsOutcome, evaluate_round, run_rounds
from server.record.run_record import RunRecord, failure_reason, new_run_id
from shared_models import messages as msgs
from shared_models.atomic_files import remove_stale_temp_files
from shared_models.freed_memory import keep_freed_memory
from server.privacy.secure_aggregation import run_secure_aggregation
from server.aggregation.strategy import FedEmoMixin, build_strategy
from shared_models.audio_features import combine_moments
from shared_models.models.registry import build_model, count_parameters
from shared_models.settings.run_settings import RunSettings, check_resume_changes, resume_changes

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    console.begin()  # our lines, a progress line per round, run.log; Flower's own chatter only when verbose
    keep_freed_memory()  # the round's screening and aggregation reuse freed memory (shared_models/freed_memory.py)
    try:
        try:
            coordinate(grid, context)
        except OSError as err:
            if not interruption.disk_full(err):
                raise
            raise interruption.DiskFull(disk_full_line(err, context)) from None  # one line, no traceback
    except BaseException as err:
        console.end_run_log(err)
        if isinstance(err, Exception) and not console.started_by_fedemo():  # flwr run: no fedemo CLI says it
            log(ERROR, "[fedemo] the run stopped: %s", err)  # Flower's console shows only its exit code
        raise
    finally:
        release_run_folders()  # the run folder is free again, however the run ended
    console.end_run_log()


def coordinate(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_config(context.run_config)
    if settings.data_dir and len(list(grid.get_node_ids())) != settings.num_supernodes:  # flwr run: Flower's count
        say_federation(settings, len(list(grid.get_node_ids())))
    # Flower samples clients with `random` (reproducible: client-level DP claims no amplification by
    # sampling). numpy's global generator is never seeded (client-level DP noise comes from the OS's entropy).
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    signing_key = coordinator_key(settings.signing_key, settings.runs_dir)  # unusable key: stop before training
    checkpoint = Checkpoint.load(Path(settings.resume)) if settings.resume else None
    record, node_config = open_run(settings, context, checkpoint)
    console.attach_run_log(record.run_dir)
    if settings.dp:
        log(INFO, console.DP_RANDOMNESS)
    recorder = RoundRecorder(record, settings.num_server_rounds)
    initial = ArrayRecord(initial_model(grid, settings, node_config, checkpoint).state_dict())
    if checkpoint is not None:  # a checkpoint of another model's shapes is refused by name, before any round
        check_checkpoint_fits(checkpoint, initial.to_torch_state_dict(), record.run_dir)
    fedemo = build_strategy(settings, recorder, initial)

    if checkpoint is None:  # round 0: the untrained model, evaluated on every node, is the baseline to beat
        first_round, arrays = 1, initial
        round0_timeout = settings.round_timeout or FIRST_ROUND_TIMEOUT_S
        if not evaluate_initial_model(fedemo, grid, initial, node_config, round0_timeout):
            return finish(record, recorder, RoundsOutcome(initial, 0, interrupted=True), {}, settings, signing_key)
    else:
        first_round, arrays = resume_state(checkpoint, fedemo, recorder)

    # Client-level central DP wraps the FedEmo strategy once the population it samples from is known.
    central = wrap_strategy(fedemo, settings, population=len(list(grid.get_node_ids())), run_dir=record.run_dir,
                            checkpoint=checkpoint)
    strategy, recorder.central = (fedemo, None) if central is None else (central.strategy, central)
    extra: dict = {}
    if settings.secure_aggregation:  # SecAgg+ runs on Flower's legacy workflow: server/privacy/secure_aggregation.py
        final, extra = run_secure_aggregation(grid, context, settings, strategy, recorder, initial, node_config)
        outcome = RoundsOutcome(final, len(recorder.history) - 1, interrupted=extra.pop("interrupted", False))
    else:
        guard = start_guard(settings.divergence_rounds, recorder.history, arrays, first_round - 1)
        try:
            outcome = run_rounds(strategy, fedemo, recorder, grid, arrays, first_round=first_round,
                                 num_rounds=settings.num_server_rounds, config=node_config, run_dir=record.run_dir,
                                 deadline=RoundDeadline(settings.round_timeout), guard=guard)
        except NonFiniteWeights as err:  # never checkpointed, never signed: the run ends on the last finite model
            outcome, extra = stopped_at_last_checkpoint(record, recorder, initial, interrupted=False), \
                {"stopped": {"reason": str(err)}}
        except OSError as err:  # the disk filled up mid-checkpoint: like an interruption, resumable
            if not interruption.disk_full(err):
                raise
            outcome = stopped_at_last_checkpoint(record, recorder, initial, interrupted=True)
            extra = {"stop_reason": f"disk full: {err.strerror} writing {err.filename}"}
    extra["aggregation"] = aggregation_record(settings)  # what "auto" chose (server/aggregation/robust_aggregation.py)
    finish(record, recorder, outcome, extra, settings, signing_key)


def open_run(settings: RunSettings, context: Context, checkpoint: Checkpoint | None) -> tuple[RunRecord, ConfigRecord]:
    """The run folder (new, or the resumed one) and the node config every message carries."""
    data_dir = dataset_folder(settings)
    if checkpoint is not None:
        hold_run_folder(settings.resume)  # before anything is written: one coordinator per run folder
        remove_stale_temp_files(settings.resume)  # a killed writer's .checkpoint.npz.PID.tmp, ...
        record = RunRecord.reopen(Path(settings.resume))
        # A resumed part continues the run it was: anything but the rounds and machines must stay as trained.
        changes = resume_changes(record.run_config(), settings.to_config())
        check_resume_changes(changes, record.run_dir)
        if checkpoint.server_round > settings.num_server_rounds:
            raise CheckpointError(f"{record.run_dir} already trained {checkpoint.server_round} rounds: "
                                  f"num-server-rounds = {settings.num_server_rounds} cannot end it earlier")
        record.add_flower_run(context.run_id, changes)  # the nodes' ledgers name this part of the run by it
        if checkpoint.server_round == settings.num_server_rounds:  # killed after its last round, before its end
            log(INFO, "FedEmo run %s trained all %d rounds but stopped before its summary and report: finishing "
                "it (final weights, summary, signed report; no training)", record.run_dir.name,
                checkpoint.server_round)
        else:
            log(INFO, "FedEmo run %s resumes after round %d of %d", record.run_dir.name, checkpoint.server_round,
                settings.num_server_rounds)
    else:
        record = RunRecord.create(Path(settings.runs_dir).resolve(), new_run_id(settings.run_name),
                                  settings.to_config(), {"data_dir": str(data_dir or ""),
                                                         "flower_run_id": context.run_id})
        hold_run_folder(record.run_dir)
        remove_stale_temp_files(record.run_dir)
    log(INFO, "FedEmo run %s: task=%s dataset=%s (%s) model=%s aggregation=%s, writing to %s", record.run_dir.name,
        settings.task, settings.dataset, data_dir, settings.model, settings.aggregation, record.run_dir)
    # Shared folders of a simulation, resolved once here: the dataset and the nodes' ledgers.
    node_config = ConfigRecord({msgs.DATA_DIR: str(data_dir), msgs.STATE_ROOT: str(record.run_dir / "node-state")})
    if data_dir is None:  # deployment: every node reads its own data-path (node config); none is sent
        del node_config[msgs.DATA_DIR]
    return record, node_config


def initial_model(grid: Grid, settings: RunSettings, node_config: ConfigRecord,
                  checkpoint: Checkpoint | None) -> torch.nn.Module:
    """The model to start from; audio models get their feature normalisation (checkpointed on resume)."""
    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    log(INFO, "Model %s: %d parameters", settings.model, count_parameters(model))
    if checkpoint is not None or settings.task not in ("voice", "fusion"):
        return model
    if settings.federated_normalisation:
        mean, std = global_feature_stats(grid, settings, node_config)
        model.set_feature_stats(torch.as_tensor(mean), torch.as_tensor(std))
    else:  # data-independent: nothing about any node's audio is released
        n_mels = next(v.numel() for k, v in model.state_dict().items() if k.endswith("feature_mean"))
        model.set_feature_stats(torch.full((n_mels,), settings.feature_fixed_mean),
                                torch.full((n_mels,), settings.feature_fixed_std))
        log(INFO, "Fixed log-mel normalisation: mean %.1f dB, std %.1f dB in every band (no node is queried)",
            settings.feature_fixed_mean, settings.feature_fixed_std)
    return model


def evaluate_initial_model(fedemo: FedEmoMixin, grid: Grid, initial: ArrayRecord, node_config: ConfigRecord,
                           timeout: float = FIRST_ROUND_TIMEOUT_S) -> bool:
    """Round 0 on every node; False when a stop was requested. Every node failing stops the run here."""
    try:
        replies = evaluate_round(fedemo, grid, 0, initial, node_config, timeout=timeout)
    except Interrupted:
        return False
    if replies and all(r.has_error() for r in replies):
        # Every node failed before any training: the cause is shared (config or data), so stop here.
        raise RuntimeError(f"all {len(replies)} nodes failed to evaluate the initial model; first reason: "
                           f"{failure_reason(replies[0].error.reason)}")
    return True


def resume_state(checkpoint: Checkpoint, fedemo: FedEmoMixin, recorder: RoundRecorder) -> tuple[int, ArrayRecord]:
    """Everything a checkpoint restores: rounds so far, optimiser state, the client-sampling RNG."""
    recorder.restore(checkpoint.history, checkpoint.privacy)
    fedemo.load_server_state(checkpoint.arrays, checkpoint.server_state)
    random.setstate(checkpoint.rng_state)
    return checkpoint.server_round + 1, checkpoint.arrays


def finish(record: RunRecord, recorder: RoundRecorder, outcome: RoundsOutcome, extra: dict, settings: RunSettings,
           signing_key) -> None:
    """Weights, summary, signed report; then an interrupted run says how to resume, a run that trained nothing fails."""
    problem = weights_problem({name: a.numpy() for name, a in outcome.arrays.items()})
    if problem:  # a model that is not finite is never saved or signed (SecAgg+ rounds are not checkpointed)
        raise NonFiniteWeights(f"the final global model holds {problem}; nothing was saved or signed")
    stop_reason = extra.pop("stop_reason", None) or interruption.stop_reason() or "stop requested"
    weights = record.save_weights(outcome.arrays.to_torch_state_dict())
    summary = {**recorder.summary(), **extra}
    # Resumable: a checkpoint exists (a round completed) and the run's state is all in it (not SecAgg+).
    resumable = outcome.last_round > 0 and not settings.secure_aggregation
    if outcome.interrupted:
        summary["interrupted"] = {"rounds_done": outcome.last_round, "planned_rounds": settings.num_server_rounds,
                                  "resume": f"fedemo simulate --resume {record.run_dir}" if resumable else None,
                                  "reason": stop_reason}
    # Complete: every planned round trained and nothing stopped the run (fedemo verify tells it apart).
    summary["complete"] = (not outcome.interrupted and not outcome.diverged and "stopped" not in summary
                           and outcome.last_round >= settings.num_server_rounds)
    summary["wall_clock_s"] = round(time.time() - console.run_started(), 1)  # the one duration the console shows
    if outcome.diverged:  # the weights saved are the best round's (server/rounds/divergence_guard.py)
        summary = rolled_back_summary(summary, recorder.history, outcome.diverged)
    record.write_json("summary.json", summary)
    log(INFO, "Final weights in %s", weights)
    # The auditor's report (server/report/build.py): per-group figures, privacy, signed with the coordinator's key.
    report = report_at_end_of_run(record.run_dir, signing_key)
    log(INFO, "%s", console.final_summary(record.run_dir.name, summary, recorder.history, report))
    if outcome.diverged:
        raise RuntimeError(f"the run diverged and stopped: {outcome.diverged['reason']}; the saved weights are "
                           f"round {outcome.diverged['rolled_back_to_round']}'s (the best evaluated)")
    if "stopped" in summary:
        raise RuntimeError(f"{summary['stopped']['reason']}; the saved and signed weights are round "
                           f"{outcome.last_round}'s")
    if outcome.interrupted and resumable:
        log(WARNING, "[fedemo] interrupted (%s) after round %d of %d. To continue: fedemo simulate --resume %s "
            "(flwr run: --run-config 'resume=\"%s\"')", stop_reason, outcome.last_round, settings.num_server_rounds,
            record.run_dir, record.run_dir)
    elif outcome.interrupted:
        log(WARNING, "[fedemo] interrupted after round %d of %d (nothing to resume from: start the run again)",
            outcome.last_round, settings.num_server_rounds)
    elif recorder.trained_rounds(settings.min_trained_nodes) == 0:
        reasons = "; ".join(f"{who}: {why}" for who, why in recorder.reasons_by_client().items()) or "none given"
        raise RuntimeError(f"no round aggregated at least {settings.min_trained_nodes} accepted update(s) "
                           f"(min-trained-nodes); reasons: {reasons}")


def stopped_at_last_checkpoint(record: RunRecord, recorder: RoundRecorder, initial: ArrayRecord, *,
                               interrupted: bool) -> RoundsOutcome:
    """The run as its last checkpoint left it (the round that could not be checkpointed is dropped)."""
    try:
        checkpoint = Checkpoint.load(record.run_dir)
    except CheckpointError:  # no round was checkpointed
        checkpoint = Checkpoint(0, initial, history=recorder.history[:1], privacy=recorder.privacy)
    try:
        recorder.restore(checkpoint.history, checkpoint.privacy)  # metrics.jsonl cut back to the checkpoint
    except OSError:  # the disk is still full: a resume cuts metrics.jsonl back
        recorder.history = list(checkpoint.history)
    return RoundsOutcome(checkpoint.arrays, checkpoint.server_round, interrupted=interrupted)


def disk_full_line(err: OSError, context: Context) -> str:
    """The one line a run that could not write its files ends with: what failed, and how to go on."""
    run_dir = Path(str(context.run_config.get("resume") or "")) if context.run_config.get("resume") else \
        Path(str(context.run_config.get("runs-dir", "runs"))) / str(context.run_config.get("run-name", ""))
    try:
        done = Checkpoint.load(run_dir).server_round
    except CheckpointError:
        done = 0
    then = (f"free some space, then continue from round {done}'s checkpoint: fedemo simulate --resume {run_dir}"
            if done else "free some space and start the run again (no round was checkpointed)")
    return f"the disk is full ({err.strerror} writing {err.filename}); the run stopped: {then}"


def dataset_folder(settings: RunSettings) -> Path | None:
    """The dataset folder as an absolute path; None in a deployment (each node names its own folder).

    The one check that a simulation's data is there, made by the coordinator
    and, before the engine starts, by ``fedemo simulate``
    (simulations/synthetic/data_prep.py, which writes a synthetic dataset
    into an empty folder first). Under ``flwr run`` nothing runs before the
    coordinator: a missing or empty folder stops the run with one line
    saying how to prepare it.
    """
    if not settings.data_dir:
        return None
    data_dir = Path(settings.data_dir).expanduser().resolve()
    if not holds_files(data_dir):
        raise FileNotFoundError(f"data-dir {data_dir} is missing or empty: point it at your {settings.dataset} copy, "
                                f"or write a synthetic one first with `{synth_command(settings, data_dir)}` "
                                "(`fedemo simulate` does this itself when synthesize-if-missing = true)")
    return data_dir


def holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def synth_command(settings: RunSettings, data_dir: Path) -> str:
    """The command that writes the run's synthetic dataset, as ``fedemo simulate`` would."""
    faces = " --with-faces" if settings.task == "fusion" else ""
    return (f"fedemo data synth {settings.dataset} --out {shlex.quote(str(data_dir))} --n {settings.synth_samples} "
            f"--seed {settings.seed}{faces}")


def say_federation(settings: RunSettings, nodes: int) -> None:
    """Under ``flwr run``: what the run config cannot set, in our words, with what is in force instead."""
    differs = nodes != settings.num_supernodes
    log(WARNING if differs else INFO,
        "flwr run: %d simulated nodes, as Flower's federation config sets them; the run config's "
        "num-supernodes = %d, client-num-cpus = %g and client-num-gpus = %g apply only to `fedemo simulate`. "
        "To set them here: flwr run . --federation-config \"num-supernodes=%d client-resources-num-cpus=%g "
        "client-resources-num-gpus=%g\"", nodes, settings.num_supernodes, settings.client_num_cpus,
        settings.client_num_gpus, settings.num_supernodes, settings.client_num_cpus, settings.client_num_gpus)


def global_feature_stats(grid: Grid, settings: RunSettings, node_config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-band mean/std of all nodes' training audio, from their sums and counts."""
    node_ids, _ = sample_nodes(grid, settings.min_available_nodes, len(list(grid.get_node_ids())))
    config = ConfigRecord({**dict(node_config), msgs.QUERY: msgs.QUERY_FEATURE_MOMENTS})
    messages = [Message(content=RecordDict({msgs.CONFIG: config}), dst_node_id=nid, message_type=MessageType.QUERY)
                for nid in node_ids]
    replies = list(grid.send_and_receive(messages))
    moments = []
    for reply in replies:
        if reply.has_error():
            log(WARNING, "Node %d sent no feature moments: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        m = reply.content[msgs.METRICS]
        moments.append((np.asarray(m[msgs.MEL_SUM]), np.asarray(m[msgs.MEL_SUMSQ]), int(m[msgs.FRAMES])))
    if not moments:
        raise RuntimeError("no node returned feature moments; cannot normalise audio features")
    log(INFO, "Global feature normalisation from %d of %d nodes", len(moments), len(replies))
    return combine_moments(moments)
