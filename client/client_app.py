"""FedEmo ClientApp: the hospital node's side of the federation (Flower Message API).

Answers ``query`` "feature-moments" (audio normalisation sums; never under DP), ``train`` (local training
from the global weights) and ``evaluate`` (confusion counts on the node's test split, never per-sample
outputs). Everything node-specific comes from the node config, so one app runs in simulation and on a
real SuperNode. Under ``dp = true`` every reply value is accounted by the ledger or data-independent
(``client/privacy/dp_allowlist.py`` checks each reply).
"""

from __future__ import annotations

import functools
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader

from client.privacy.central_dp_clipping import central_dp_clipping_mod
from client.privacy.dp_allowlist import dp_allowlist_mod
from client.privacy.dp_training import make_private, plan_round, planned_participation
from client.privacy.node_runtime import start_node_runtime
from client.privacy.private_step import PrivateStep
from client.data.fairness_weights import WeightedSamples
from client.data.fixed_features import feature_dataset, uses_fixed_features
from client.privacy.group_counts import (eval_noise_multiplier, group_calibration_metrics, group_count_metrics,
                                 overall_confusion, release_noised_evaluation, sample_groups)
from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from client.data.consent_log import consent_wire, log_training
from client.data.node_data import ClientSamples, client_samples
from client.tools.outgoing_audit import outgoing_audit_mod
from client.privacy.secure_aggregation import secure_aggregation_mod
from client.tools.spend_plan import require_approval
from client.data.torch_data import NUM_MODEL_INPUTS
from client.global_weights import global_state_dict
from shared_models import messages as msgs
from shared_models.privacy_ledger import LedgerError, PrivacyLedger, run_folder_name, simulated_state_dir
from shared_models.freed_memory import keep_freed_memory
from shared_models.quiet_warnings import install as quiet_known_warnings
from shared_models.models.registry import build_model
from shared_models.settings.run_settings import RunSettings

quiet_known_warnings()  # third-party warnings known to be harmless here, each silenced with its reason
keep_freed_memory()  # every step's activations reuse freed memory, not fresh pages (shared_models/freed_memory.py)
app = ClientApp(mods=[outgoing_audit_mod])  # a deployed node logs what it sends (client/tools/outgoing_audit.py)
# Opacus's engine only counts this round's steps (PrivateStep.steps_taken); the ledger's PLD accountant accounts.
OPACUS_STEP_COUNTER = "rdp"


def _setup(msg: Message, context: Context) -> tuple[RunSettings, ClientSamples, torch.device]:
    settings = RunSettings.from_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    config = msg.content[msgs.CONFIG] if msgs.CONFIG in msg.content else ConfigRecord()
    # In simulation the coordinator resolves the shared dataset folder once and
    # sends it; a deployed node ignores it and reads its own node config.
    data_dir = str(config.get(msgs.DATA_DIR, settings.data_dir))
    samples = client_samples(settings, context.node_config, data_dir, str(config.get(msgs.STATE_ROOT, "")))
    return settings, samples, resolve_device(settings.device)


@functools.lru_cache(maxsize=8)
def _reusable_model(name: str, valence_arousal: bool, device: torch.device, thread: int) -> torch.nn.Module:
    del thread  # in the key only: a thread never shares its model with another
    return build_model(name, valence_arousal=valence_arousal).to(device)


def _global_model(msg: Message, settings: RunSettings, device: torch.device, *, fresh: bool = False) -> torch.nn.Module:
    """The coordinator's weights in a model of the run's architecture.

    A process serving many nodes (a simulation worker) loads each message's
    weights into one model object per architecture: ``load_state_dict``
    replaces every parameter and buffer, and building a model costs about as
    much as evaluating a small node's test split. ``fresh`` builds a new one:
    DP training, as Opacus attaches its hooks to the model it wraps.
    """
    if fresh:
        model = build_model(settings.model, valence_arousal=settings.valence_arousal).to(device)
    else:
        model = _reusable_model(settings.model, settings.valence_arousal, device, threading.get_ident())
    model.load_state_dict(global_state_dict(msg.content[msgs.ARRAYS]))  # copied in: the decoded tensors are shared
    return model


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to send, copied to the CPU (the model itself stays where it is, for the next message)."""
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def _reply(msg: Message, samples: ClientSamples, metrics: dict, arrays: ArrayRecord | None = None,
           client: dict | None = None) -> Message:
    metrics = {**metrics, msgs.UPDATE_WEIGHT: 1}  # equal weights: what client-level central DP averages by
    content = RecordDict({msgs.METRICS: MetricRecord(metrics),
                          msgs.CLIENT: ConfigRecord({msgs.CLIENT_ID: samples.client_id, **(client or {})})})
    if arrays is not None:
        content[msgs.ARRAYS] = arrays
    return Message(content=content, reply_to=msg)


@dataclass
class LocalTraining:
    """One node's local training, prepared from its train message: what ``train_epochs`` is given. Under DP,
    ``private`` is the node's own DP-SGD step (its model, optimizer, secret noise generator, plan and Poisson
    loader from ``make_private``), and ``model``, ``loader`` and ``optimizer`` are that step's."""

    settings: RunSettings
    model: torch.nn.Module  # holds the global weights; holds the node's trained weights afterwards
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    n_inputs: int
    device: torch.device
    private: PrivateStep | None = None

    def run(self) -> dict[str, float]:
        return train_epochs(self.model, self.loader, self.optimizer, epochs=self.settings.local_epochs,
                            n_inputs=self.n_inputs, device=self.device, private=self.private)


# A simulation worker that trains several nodes' messages as one batched computation installs, in each of
# their threads, a runner that takes the prepared training and returns its metrics with the trained weights
# loaded into its model (simulations/engine/client_groups.py). Without one, each node trains on its own.
_training_runner = threading.local()


def set_training_runner(runner: Callable[[LocalTraining], dict[str, float]] | None) -> None:
    """Install (or with None remove) this thread's runner of local training (non-DP and DP alike)."""
    _training_runner.run = runner


def run_local_training(training: LocalTraining) -> dict[str, float]:
    runner = getattr(_training_runner, "run", None)
    return training.run() if runner is None else runner(training)


# Mods run outermost first: SecAgg+ and clipping pass through unless their mode is on; the DP allowlist
# sits innermost, on exactly what the handler produced.
@app.train(mods=[secure_aggregation_mod, central_dp_clipping_mod, dp_allowlist_mod])
def train(msg: Message, context: Context) -> Message:
    settings, samples, device = _setup(msg, context)
    model = _global_model(msg, settings, device, fresh=settings.dp)
    config = msg.content[msgs.CONFIG]
    server_round = int(config.get(msgs.SERVER_ROUND, 0))
    # Augmentation draws (per record, client/data/torch_data.py): without dp reproducible from the seed, the round and
    # the client id; under dp from fresh secret bits, after make_private (below).
    if not settings.dp:
        samples.train.reseed([settings.seed, server_round, zlib.crc32(samples.client_id.encode())])
    # Reproducible shuffling without DP; under DP make_private replaces it with secret Poisson sampling.
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + server_round)
    # A model with a fixed front end (face_scatter) trains its head on features computed once per sample.
    train_set = feature_dataset(samples.train, model.fixed_features) if uses_fixed_features(model) else samples.train
    # fairness-reweight (never with dp: the weights depend on every record's group, see run_settings)
    if settings.fairness_reweight:
        train_set = WeightedSamples(train_set, settings.fairness_reweight, data=samples.train.data,
                                    power=settings.fairness_reweight_power)
    loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=True, generator=generator)
    optimizer = make_optimizer(model, settings)
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    # Consent: this run's line in the node's consent log, then counts and the manifest's hash (never record ids).
    run_name = run_folder_name(config.get(msgs.STATE_ROOT), settings.run_name)
    log_training(samples, run_name, str(context.run_id))
    consent_metrics, consent_client = consent_wire(samples, run_name, str(context.run_id))
    metrics: dict = {msgs.NUM_EXAMPLES: len(samples.train), **consent_metrics}
    if not settings.dp:
        trained = run_local_training(LocalTraining(settings, model, loader, optimizer, n_inputs, device))
        metrics.update({msgs.SKIPPED: samples.skipped, msgs.TRAIN_LOSS: trained[msgs.TRAIN_LOSS],
                        msgs.TRAIN_SAMPLES: trained[msgs.TRAIN_SAMPLES]})
        return _reply(msg, samples, metrics, ArrayRecord(_cpu_state(model)), consent_client)

    # Sample-level DP-SGD: check the ledger first, record the spend before replying.
    ledger = open_ledger(settings, context, config, samples)
    run = str(context.run_id)
    plan = plan_round(ledger, run, batches_per_epoch=len(loader), local_epochs=settings.local_epochs,
                      num_rounds=planned_participation(settings.num_server_rounds, settings.fraction_train),
                      max_grad_norm=settings.dp_max_grad_norm,
                      max_noise=settings.dp_max_noise_multiplier)
    planned_epsilon = ledger.check(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)  # raises: declines
    start_node_runtime()  # once per process: process settings a DP step relies on (client/privacy/node_runtime.py)
    dp = make_private(model, optimizer, loader, plan, accountant=OPACUS_STEP_COUNTER, secure_mode=settings.dp_secure_mode)
    # The coordinator knows the seed, the round and the client id: the draws come from fresh secret bits, drawn
    # after Opacus's loader read dataset[0] for its empty-batch shapes (so whichever record is first uses no draw).
    samples.train.reseed_secret()
    # The loss and the samples seen stay on the node: neither is accounted for.
    run_local_training(LocalTraining(settings, dp.model, dp.loader, dp.optimizer, n_inputs, device, private=dp))
    steps = dp.steps_taken()  # Opacus's Poisson loader takes exactly the planned steps; recompute if not
    # Binding check-and-record under the ledger's lock, before anything is sent (raises: nothing sent).
    event = ledger.spend(run=run, server_round=server_round, noise_multiplier=plan.noise_multiplier,
                         sample_rate=plan.sample_rate, steps=steps, max_grad_norm=plan.max_grad_norm,
                         epsilon_hint=planned_epsilon if steps == plan.steps_per_round else None)
    metrics.update({
        msgs.DP_EPSILON_SPENT: event.epsilon_after, msgs.DP_DELTA: ledger.delta,
        msgs.DP_NOISE_MULTIPLIER: event.noise_multiplier, msgs.DP_SAMPLE_RATE: event.sample_rate,
        msgs.DP_STEPS: event.steps, msgs.DP_STEPS_TOTAL: sum(e.steps for e in ledger.events if e.kind == "train"),
        msgs.DP_MAX_GRAD_NORM: event.max_grad_norm, msgs.DP_BUDGET: ledger.epsilon_budget,
        msgs.DP_BUDGET_REMAINING: max(0.0, ledger.epsilon_budget - event.epsilon_after),
    })
    reply = _reply(msg, samples, metrics, ArrayRecord(_cpu_state(dp.module)), consent_client)
    reply.content[msgs.CLIENT][msgs.DP_ACCOUNTANT] = ledger.accountant
    reply.content[msgs.CLIENT][msgs.DP_LEDGER_HEAD] = ledger.chain_head()  # our event's hash: the coordinator records it
    return reply


def open_ledger(settings: RunSettings, context: Context, config: ConfigRecord, samples: ClientSamples) -> PrivacyLedger:
    """The ledger of this node's dataset: node config's state folder, else the run's (simulation only)."""
    if "state-dir" in context.node_config:
        state_dir = Path(str(context.node_config["state-dir"])).expanduser()
    elif "data-path" in context.node_config:  # a deployed node never keeps its budget in the coordinator's folders
        raise LedgerError('DP is on but this node has no state folder for its privacy ledger: add '
                          'state-dir="/absolute/path" to its --node-config')
    else:
        root = settings.state_dir or str(config.get(msgs.STATE_ROOT, ""))
        if not root:
            raise LedgerError("DP is on but this node has no state folder: set node-config state-dir")
        state_dir = simulated_state_dir(root, samples.client_id)
    n = len(samples.train)
    delta = settings.dp_delta or 1.0 / (10 * max(n, 1))
    run = (str(context.run_id), run_folder_name(config.get(msgs.STATE_ROOT), settings.run_name))  # named by its folder
    # The ledger refuses a delta (min of stored and configured) of 1/n or more: see _check_delta's reason.
    ledger = PrivacyLedger.open(state_dir, dataset_id=samples.dataset_id, epsilon_budget=settings.dp_epsilon,
                                delta=delta, accountant=settings.dp_accountant, run=run, records=n)
    require_approval(context.node_config, state_dir, ledger)  # approve-first: a first spend needs its approval
    return ledger


@app.evaluate(mods=[dp_allowlist_mod])
def evaluate_global(msg: Message, context: Context) -> Message:
    settings, samples, device = _setup(msg, context)
    model = _global_model(msg, settings, device)
    test_set = feature_dataset(samples.test, model.fixed_features) if uses_fixed_features(model) else samples.test
    loader = DataLoader(test_set, batch_size=max(settings.batch_size, 64))
    counts = evaluate(model, loader, n_inputs=NUM_MODEL_INPUTS[settings.task], device=device,
                      groups=sample_groups(samples.test.data, settings.dataset))
    if settings.eval_dp_noise_multiplier > 0:  # every released count noised, checked against and spent from the ledger
        config = msg.content[msgs.CONFIG] if msgs.CONFIG in msg.content else ConfigRecord()
        ledger = open_ledger(settings, context, config, samples)
        run = str(context.run_id)
        noise = eval_noise_multiplier(  # the configured floor, raised to fit the run's planned evaluations
            ledger, run, attributes=len(counts.group_confusion), floor=settings.eval_dp_noise_multiplier,
            planned_releases=planned_participation(settings.num_server_rounds + 1, settings.fraction_evaluate))
        group_confusion, group_calibration, event = release_noised_evaluation(  # confusion + calibration bins
            counts.group_confusion, counts.group_calibration, ledger=ledger, run=run,
            server_round=int(config.get(msgs.SERVER_ROUND, 0)), noise_multiplier=noise)
        # The overall confusion is the mean over attributes of their noised groups' sums (each partitions the
        # test rows): post-processing, free. The exact loss and valence/arousal sums are not released at all.
        confusion = overall_confusion(group_confusion)
        metrics = {msgs.NUM_EXAMPLES: int(confusion.sum()), msgs.CONFUSION: [int(v) for v in confusion.ravel()],
                   msgs.GROUP_DP_NOISE_MULTIPLIER: event.noise_multiplier,
                   msgs.GROUP_DP_EPSILON_SPENT: event.epsilon_after}  # the evaluation epsilon, not training's
        metrics.update(group_count_metrics(group_confusion, settings.dataset))
        metrics.update(group_calibration_metrics(group_calibration, settings.dataset))
        reply = _reply(msg, samples, metrics)
        reply.content[msgs.CLIENT][msgs.DP_LEDGER_HEAD] = ledger.chain_head()
        return reply
    metrics = {
        msgs.NUM_EXAMPLES: counts.n,
        msgs.LOSS_SUM: counts.loss_sum,
        msgs.CONFUSION: [int(v) for v in counts.confusion.ravel()],
    }
    if not settings.dp:
        metrics[msgs.SKIPPED] = samples.skipped
    if counts.va_moments is not None:
        metrics[msgs.VA_MOMENTS] = [float(v) for v in counts.va_moments.ravel()]
    metrics.update(group_count_metrics(counts.group_confusion, settings.dataset))
    metrics.update(group_calibration_metrics(counts.group_calibration, settings.dataset))
    return _reply(msg, samples, metrics)


@app.query(mods=[dp_allowlist_mod])  # never answered under dp: the sums are not noised
def query(msg: Message, context: Context) -> Message:
    settings, samples, _ = _setup(msg, context)
    what = str(msg.content[msgs.CONFIG].get(msgs.QUERY, ""))
    if what != msgs.QUERY_FEATURE_MOMENTS:
        raise ValueError(f"unknown query {what!r}")
    # Sums over this node's clean training clips only: the normalisation must not see test data.
    sums, squares, frames = samples.train.feature_moments()
    metrics = {msgs.MEL_SUM: sums.tolist(), msgs.MEL_SUMSQ: squares.tolist(), msgs.FRAMES: frames,
               msgs.NUM_EXAMPLES: len(samples.train)}
    return _reply(msg, samples, metrics)

