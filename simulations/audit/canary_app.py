"""The audit run's ClientApp: FedEmo's own node, with the canaries of the plan (simulations/audit/plan.py).

``sample``: every hospital is the real node (``client.client_app.app``, its DP-SGD, ledger and mods) whose
data source is its partition plus its canary slots: the slot rows join its training set (mislabelled when
the coin is 1, with their true label when it is 0) and leave its test set. ``client``: partitions
0..H-1 are the real node over H partitions (the canary nodes own no data), and each canary node answers a
training round with the global model plus its direction at the clipping norm (coin 1) or unchanged (coin 0),
and refuses evaluation (it holds no test data). Research runs only: ``fedemo audit`` loads this app.
"""

from __future__ import annotations

import dataclasses
import json
import functools
import os

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import client.client_app as node
from client.data.loaders.base import EmotionData
from client.data.node_data import ClientSamples
from client.data.torch_data import EmotionSamples
from shared_models import messages as msgs
from simulations.audit.plan import PLAN_ENV, canary_direction, full_dataset, initial_path, read_plan, updates_path
from simulations.audit.scores import canary_inputs, margins


@functools.lru_cache(maxsize=1)
def plan() -> dict:
    return read_plan(os.environ[PLAN_ENV])


def concat(a: EmotionData, b: EmotionData) -> EmotionData:
    """The rows of ``a`` then those of ``b`` (one dataset folder)."""
    both = lambda x, y: None if x is None else np.concatenate([x, y])  # noqa: E731
    return EmotionData(dataset=a.dataset, modality=a.modality, root=a.root, refs=both(a.refs, b.refs),
                       labels=both(a.labels, b.labels), subjects=both(a.subjects, b.subjects),
                       demographics={k: both(v, b.demographics[k]) for k, v in a.demographics.items()},
                       published_split=both(a.published_split, b.published_split),
                       valence_arousal=both(a.valence_arousal, b.valence_arousal), faces=both(a.faces, b.faces),
                       skipped=list(a.skipped), flagged=dict(a.flagged))


_SLOTTED: dict[int, tuple[ClientSamples, ClientSamples]] = {}  # id(node's samples) -> (them, with slots)


def _with_slots(samples: ClientSamples, dataset: str, data_dir: str, task: str) -> ClientSamples:
    """``samples`` with this node's canary slots moved from its test set into its training set (once per object)."""
    kept = _SLOTTED.get(id(samples))
    if kept is None or kept[0] is not samples:
        kept = _SLOTTED[id(samples)] = (samples, _slotted(samples, dataset, data_dir, task))
    return kept[1]


def _slotted(samples: ClientSamples, dataset: str, data_dir: str, task: str) -> ClientSamples:
    the_plan = plan()
    mine = [(c, coin) for c, coin in zip(the_plan["canaries"], the_plan["coins"]) if str(c["node"]) == samples.client_id]
    if not mine:
        return samples
    data = full_dataset(dataset, data_dir, task)
    slots = data.subset([c["row"] for c, _ in mine])
    slots.labels = np.array([c["canary_label"] if coin else c["true_label"] for c, coin in mine], dtype=np.int64)
    slot_refs = set(slots.refs.tolist())
    test = samples.test.data
    keep = np.array([ref not in slot_refs for ref in test.refs.tolist()])
    # seed None: a secret stream; the node reseeds it every round anyway (public without dp, secret with dp)
    train = EmotionSamples(concat(samples.train.data, slots), task, augment=samples.train.augment, seed=None)
    return dataclasses.replace(samples, train=train,
                               test=EmotionSamples(test.subset(np.flatnonzero(keep)), task, augment=False, seed=None))


_real_client_samples = node.client_samples


def client_samples_with_canaries(settings, node_config, data_dir, *args, **kwargs):
    samples = _real_client_samples(settings, node_config, data_dir, *args, **kwargs)
    if settings.audit != "sample":
        return samples
    return _with_slots(samples, settings.dataset, str(data_dir), settings.task)


node.client_samples = client_samples_with_canaries  # the real node's one data source, in this process only


def _hospital_context(context: Context) -> Context:
    """A hospital of the client audit sees H partitions: the canary nodes own no data."""
    the_plan = plan()
    if the_plan["mode"] != "client":
        return context
    return dataclasses.replace(context, node_config={**context.node_config, "num-partitions": the_plan["hospitals"]})


def _canary_reply(msg: Message, index: int) -> Message:
    the_plan = plan()
    canary, coin = the_plan["canaries"][index], the_plan["coins"][index]
    arrays = msg.content[msgs.ARRAYS]
    names = list(arrays.keys())
    current = [np.asarray(a) for a in arrays.to_numpy_ndarrays()]
    floats = [i for i, a in enumerate(current) if np.issubdtype(a.dtype, np.floating)]
    if int(msg.content[msgs.CONFIG].get(msgs.SERVER_ROUND, 0)) == 1:  # the initial model: the scores' origin
        _keep_initial({names[i]: current[i] for i in floats})
    if coin:
        scale = the_plan["clipping_norm"] * (1 - 1e-6)  # at the clipping norm, never clipped further
        direction = canary_direction(canary["seed"], [current[i].shape for i in floats])
        for i, d in zip(floats, direction):
            current[i] = (current[i].astype(np.float64) + scale * d).astype(current[i].dtype)
    # The keys an honest node without dp sends (FedAvg aggregates only replies with the same keys); no loss to report
    metrics = {msgs.NUM_EXAMPLES: the_plan["num_examples"], msgs.SKIPPED: 0, msgs.TRAIN_LOSS: 0.0,
               msgs.TRAIN_SAMPLES: the_plan["num_examples"], msgs.UPDATE_WEIGHT: 1,
               **{key: 0 for key in msgs.CONSENT_METRICS}}  # no records: none used or left out
    # the consent fields every node's reply carries (client/data/consent_log.py's consent_wire): no manifest, no log
    client = {msgs.CLIENT_ID: f"canary-{index}", msgs.CONSENT_MANIFEST: "", msgs.CONSENT_POLICY: "exclude"}
    content = RecordDict({msgs.ARRAYS: ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in zip(names, current)}),
                          msgs.METRICS: MetricRecord(metrics),
                          msgs.CLIENT: ConfigRecord(client)})
    return Message(content=content, reply_to=msg)


def _keep_initial(arrays: dict[str, np.ndarray]) -> None:
    """Round 1's global model beside the plan file (every canary node writes the same; atomic replace)."""
    target = initial_path(os.environ[PLAN_ENV])
    if target.exists():
        return
    partial = target.with_name(f".{target.stem}.{os.getpid()}.npz")
    np.savez(partial, **arrays)
    os.replace(partial, target)


app = ClientApp()


def _canary_index(context: Context) -> int | None:
    the_plan = plan()
    pid = int(context.node_config.get("partition-id", -1))
    if the_plan["mode"] == "client" and pid >= the_plan["hospitals"]:
        return pid - the_plan["hospitals"]
    return None


@app.train()
def train(msg: Message, context: Context) -> Message:
    index = _canary_index(context)
    if index is not None:
        return _canary_reply(msg, index)
    reply = node.app(msg, _hospital_context(context))
    if plan()["mode"] == "sample" and not reply.has_error() and msgs.ARRAYS in reply.content:
        _record_gains(msg, reply, context)
    return reply


_INPUTS: dict[str, tuple] = {}  # client id -> (its canaries' indices, the canaries, their model inputs)


def _record_gains(msg: Message, reply: Message, context: Context) -> None:
    """This node's canaries' margin under the model it sends minus under the global model it got, for this round."""
    from shared_models.models.registry import build_model
    from shared_models.settings.run_settings import RunSettings
    from client.data.torch_data import NUM_MODEL_INPUTS

    settings = RunSettings.from_config(context.run_config)
    client_id = str(reply.content[msgs.CLIENT][msgs.CLIENT_ID])
    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    if client_id not in _INPUTS:
        the_plan = plan()
        indices = [i for i, c in enumerate(the_plan["canaries"]) if str(c["node"]) == client_id]
        canaries = [the_plan["canaries"][i] for i in indices]
        data_dir = str(msg.content[msgs.CONFIG].get(msgs.DATA_DIR, settings.data_dir))
        _INPUTS[client_id] = (indices, canaries, [canary_inputs(settings, canaries, data_dir, model, key)
                                                  for key in ("row", "control_row")] if indices else None)
    indices, canaries, inputs = _INPUTS[client_id]
    if not indices:
        return
    n_inputs = NUM_MODEL_INPUTS[settings.task]

    def controlled_margins(arrays) -> np.ndarray:  # the canary's margin minus its control's (same two labels)
        model.load_state_dict(arrays.to_torch_state_dict())
        return margins(model, inputs[0], canaries, n_inputs) - margins(model, inputs[1], canaries, n_inputs)

    before, after = controlled_margins(msg.content[msgs.ARRAYS]), controlled_margins(reply.content[msgs.ARRAYS])
    line = {"round": int(msg.content[msgs.CONFIG].get(msgs.SERVER_ROUND, 0)), "canaries": indices,
            "gains": [float(g) for g in after - before]}
    with open(updates_path(os.environ[PLAN_ENV], client_id), "a") as out:
        out.write(json.dumps(line) + "\n")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    if _canary_index(context) is not None:  # an error reply: counted among the round's evaluation failures
        return Message(error=Error(code=0, reason="audit canary node: no test data"), reply_to=msg)
    return node.app(msg, _hospital_context(context))


@app.query()
def query(msg: Message, context: Context) -> Message:
    if _canary_index(context) is not None:
        return Message(error=Error(code=0, reason="audit canary node: no data"), reply_to=msg)
    return node.app(msg, _hospital_context(context))

