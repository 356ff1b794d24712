"""FedEmo ClientApp: the hospital node's side of the federation (Flower Message API).

It answers three kinds of message from the coordinator:

- ``query`` "feature-moments": per-mel-band sums and counts of this node's
  training audio, from which the coordinator builds the global normalisation
  (never asked under DP: the sums are not noised, see docs/privacy.md).
- ``train``: local training from the global weights; replies with new weights
  and counts.
- ``evaluate``: evaluates the global weights on this node's test split and
  replies with a confusion matrix and moment sums, never per-sample outputs.

Everything node-specific (data folder, dataset format) comes from the node
config, so the same app runs in simulation and on a real SuperNode.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader

from client.central_dp_clipping import central_dp_clipping_mod
from client.dp_training import make_private, plan_round, steps_taken
from client.fairness_weights import WeightedSamples
from client.group_counts import group_count_metrics, planned_eval_releases, release_noised_counts, sample_groups
from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from client.node_data import ClientSamples, client_samples
from client.outgoing_audit import outgoing_audit_mod
from shared_models.privacy_ledger import LedgerError, PrivacyLedger, simulated_state_dir
from client.secure_aggregation import secure_aggregation_mod
from client.torch_data import NUM_MODEL_INPUTS
from shared_models.registry import build_model
from shared_models.run_settings import UPDATE_WEIGHT_KEY, RunSettings

app = ClientApp(mods=[outgoing_audit_mod])  # a deployed node logs what it sends (client/outgoing_audit.py)


def _setup(msg: Message, context: Context) -> tuple[RunSettings, ClientSamples, torch.device]:
    settings = RunSettings.from_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    config = msg.content["config"] if "config" in msg.content else ConfigRecord()
    # In simulation the coordinator resolves the shared dataset folder once and
    # sends it; a deployed node ignores it and reads its own node config.
    data_dir = str(config.get("data-dir", settings.data_dir))
    return settings, client_samples(settings, context.node_config, data_dir), resolve_device(settings.device)


def _global_model(msg: Message, settings: RunSettings, device: torch.device) -> torch.nn.Module:
    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model.to(device)


def _reply(msg: Message, samples: ClientSamples, metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    metrics = {**metrics, UPDATE_WEIGHT_KEY: 1}  # equal weights: what client-level central DP averages by
    content = RecordDict({"metrics": MetricRecord(metrics), "client": ConfigRecord({"client-id": samples.client_id})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


@app.train(mods=[secure_aggregation_mod, central_dp_clipping_mod])  # each passes through unless its mode is on
def train(msg: Message, context: Context) -> Message:
    settings, samples, device = _setup(msg, context)
    model = _global_model(msg, settings, device)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    samples.train.reseed([settings.seed, server_round, zlib.crc32(samples.client_id.encode())])
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + server_round)
    # fairness-reweight: each sample's loss weighted by 1 / its group's share on this node (per sample, DP-safe)
    train_set = WeightedSamples(samples.train, settings.fairness_reweight) if settings.fairness_reweight else samples.train
    loader = DataLoader(train_set, batch_size=settings.batch_size, shuffle=True, generator=generator)
    optimizer = make_optimizer(model, settings)
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    metrics: dict = {"num-examples": len(samples.train), "skipped": samples.skipped}
    if not settings.dp:
        metrics.update(train_epochs(model, loader, optimizer, epochs=settings.local_epochs,
                                    n_inputs=n_inputs, device=device))
        return _reply(msg, samples, metrics, ArrayRecord(model.cpu().state_dict()))

    # Sample-level DP-SGD: check the ledger first, record the spend before replying.
    ledger = open_ledger(settings, context, config, samples)
    run = str(context.run_id)
    plan = plan_round(ledger, run, batches_per_epoch=len(loader), local_epochs=settings.local_epochs,
                      num_rounds=settings.num_server_rounds, max_grad_norm=settings.dp_max_grad_norm,
                      max_noise=settings.dp_max_noise_multiplier,
                      reserved=planned_eval_releases(settings.dataset, settings.eval_dp_noise_multiplier,
                                                     settings.num_server_rounds))
    planned_epsilon = ledger.check(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)  # raises: declines
    private_model, private_optimizer, private_loader, engine = make_private(
        model, optimizer, loader, plan, accountant=ledger.accountant, secure_mode=settings.dp_secure_mode)
    metrics.update(train_epochs(private_model, private_loader, private_optimizer, epochs=settings.local_epochs,
                                n_inputs=n_inputs, device=device, private=True))
    steps = steps_taken(engine)  # Opacus's Poisson loader takes exactly the planned steps; recompute if not
    event = ledger.record(run=run, server_round=server_round, noise_multiplier=plan.noise_multiplier,
                          sample_rate=plan.sample_rate, steps=steps, max_grad_norm=plan.max_grad_norm,
                          epsilon_after=planned_epsilon if steps == plan.steps_per_round else None)
    metrics.update({
        "dp-epsilon": event.epsilon_after, "dp-delta": ledger.delta, "dp-noise-multiplier": event.noise_multiplier,
        "dp-sample-rate": event.sample_rate, "dp-steps": event.steps,
        "dp-steps-total": sum(e.steps for e in ledger.events), "dp-max-grad-norm": event.max_grad_norm,
        "dp-budget": ledger.epsilon_budget, "dp-budget-remaining": max(0.0, ledger.epsilon_budget - event.epsilon_after),
    })
    reply = _reply(msg, samples, metrics, ArrayRecord(private_model._module.cpu().state_dict()))
    reply.content["client"]["dp-accountant"] = ledger.accountant
    return reply


def open_ledger(settings: RunSettings, context: Context, config: ConfigRecord, samples: ClientSamples) -> PrivacyLedger:
    """The ledger of this node's dataset: node config's state folder, else the run's (simulation only)."""
    if "state-dir" in context.node_config:
        state_dir = Path(str(context.node_config["state-dir"])).expanduser()
    elif "data-path" in context.node_config:  # a deployed node never keeps its budget in the coordinator's folders
        raise LedgerError('DP is on but this node has no state folder for its privacy ledger: add '
                          'state-dir="/absolute/path" to its --node-config')
    else:
        root = settings.state_dir or str(config.get("state-root", ""))
        if not root:
            raise LedgerError("DP is on but this node has no state folder: set node-config state-dir")
        state_dir = simulated_state_dir(root, samples.client_id)
    delta = settings.dp_delta or 1.0 / (10 * max(len(samples.train), 1))
    return PrivacyLedger.open(state_dir, dataset_id=samples.dataset_id, epsilon_budget=settings.dp_epsilon,
                              delta=delta, accountant=settings.dp_accountant)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    settings, samples, device = _setup(msg, context)
    model = _global_model(msg, settings, device)
    loader = DataLoader(samples.test, batch_size=max(settings.batch_size, 64))
    counts = evaluate(model, loader, n_inputs=NUM_MODEL_INPUTS[settings.task], device=device,
                      groups=sample_groups(samples.test.data, settings.dataset))
    metrics = {
        "num-examples": counts.n,
        "loss-sum": counts.loss_sum,
        "confusion": [int(v) for v in counts.confusion.ravel()],
        "skipped": samples.skipped,
    }
    if counts.va_moments is not None:
        metrics["va-moments"] = [float(v) for v in counts.va_moments.ravel()]
    group_confusion = counts.group_confusion
    if settings.eval_dp_noise_multiplier > 0:  # noised per-group counts: checked against and spent from the ledger
        config = msg.content["config"] if "config" in msg.content else ConfigRecord()
        group_confusion, event = release_noised_counts(
            group_confusion, ledger=open_ledger(settings, context, config, samples), run=str(context.run_id),
            server_round=int(config.get("server-round", 0)), noise_multiplier=settings.eval_dp_noise_multiplier)
        metrics.update({"grp-dp-noise-multiplier": event.noise_multiplier, "grp-dp-epsilon": event.epsilon_after})
    metrics.update(group_count_metrics(group_confusion, settings.dataset))
    return _reply(msg, samples, metrics)


@app.query()
def query(msg: Message, context: Context) -> Message:
    settings, samples, _ = _setup(msg, context)
    what = str(msg.content["config"].get("query", ""))
    if what != "feature-moments":
        raise ValueError(f"unknown query {what!r}")
    # Sums over this node's clean training clips only: the normalisation must not see test data.
    sums, squares, frames = samples.train.feature_moments()
    metrics = {"mel-sum": sums.tolist(), "mel-sumsq": squares.tolist(), "frames": frames,
               "num-examples": len(samples.train)}
    return _reply(msg, samples, metrics)

