"""The audit run's ClientApp: FedEmo's own node, with the canaries of the plan (simulations/audit/plan.py).

``sample``: every hospital is the real node (``client.client_app.app``, its DP-SGD, ledger and mods, its data
untouched); around a train message of a hospital holding canaries this app sets the training seam
(``client.local_training.STEP_OBSERVER``) to its white-box gradient canaries (simulations/audit/gradient_canaries.py)
and writes their scores for the round beside the plan. ``client``: partitions
0..H-1 are the real node over H partitions (the canary nodes own no data), and each canary node answers a
training round with the global model plus its direction at the clipping norm (coin 1) or unchanged (coin 0),
and refuses evaluation (it holds no test data). Research runs only: ``fedemo audit`` loads this app.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import functools
import os

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import client.client_app as node
from shared_models import messages as msgs
from simulations.audit.gradient_canaries import GradientCanaries
from simulations.audit.plan import PLAN_ENV, canary_direction, initial_path, norms_path, read_plan, updates_path


@functools.lru_cache(maxsize=1)
def plan() -> dict:
    return read_plan(os.environ[PLAN_ENV])


def _hospital_context(context: Context) -> Context:
    """A hospital of the client audit sees H partitions: the canary nodes own no data."""
    the_plan = plan()
    if the_plan["mode"] != "client":
        return context
    return dataclasses.replace(context, node_config={**context.node_config, "num-partitions": the_plan["hospitals"]})


def _canary_reply(msg: Message, index: int, context: Context) -> Message:
    the_plan = plan()
    canary, coin = the_plan["canaries"][index], the_plan["coins"][index]
    arrays = msg.content[msgs.ARRAYS]
    names = list(arrays.keys())
    current = [np.asarray(a) for a in arrays.to_numpy_ndarrays()]
    floats = [i for i, a in enumerate(current) if np.issubdtype(a.dtype, np.floating)]
    if int(msg.content[msgs.CONFIG].get(msgs.SERVER_ROUND, 0)) == 1:  # the initial model: the scores' origin
        _keep_initial({names[i]: current[i] for i in floats})
    if coin:
        scale = canary_norm(msg, context) * (1 - 1e-6)  # under central DP: at the clipping norm, never clipped further
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


def canary_norm(msg: Message, context: Context) -> float:
    """The L2 norm of a coin-1 canary's update this round: the plan's, or the median measured honest update norm."""
    fixed = plan().get("canary_norm")
    return float(fixed) if fixed else honest_norms(msg, context)["median"]


_NORMS: dict[int, dict] = {}  # round -> its measured honest update norms (this process's copy of the file)


def honest_norms(msg: Message, context: Context) -> dict:
    """This round's update norms of the plan's ``norm_hospitals``, trained by the real node on the round's model.

    The measuring canary's ``context`` (run and node config) is handed down the calls, never kept in a global, so
    canaries answering in threads of one process each measure with their own. Computed once per round across the
    engine's processes (an exclusive lock on a file beside the plan); without
    dp the nodes' training streams are public and reseeded per round, so these are the hospitals' own updates.
    """
    server_round = int(msg.content[msgs.CONFIG].get(msgs.SERVER_ROUND, 0))
    if server_round in _NORMS:
        return _NORMS[server_round]
    target = norms_path(os.environ[PLAN_ENV])
    with open(target.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = json.loads(target.read_text()) if target.exists() else {}
        if str(server_round) not in known:
            hospitals = plan()["norm_hospitals"]
            norms = [_update_norm(msg, pid, context) for pid in hospitals]
            known[str(server_round)] = {"hospitals": hospitals, "norms": norms, "median": float(np.median(norms))}
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_text(json.dumps(known))
            os.replace(partial, target)
    _NORMS[server_round] = known[str(server_round)]
    return _NORMS[server_round]


def _update_norm(msg: Message, pid: int, context: Context) -> float:
    """The L2 norm of hospital ``pid``'s update to the model in ``msg`` (its floating-point arrays), by the real node."""
    hospital = dataclasses.replace(context, node_config={**context.node_config, "partition-id": pid,
                                                         "num-partitions": plan()["hospitals"]}, state=RecordDict())
    reply = node.app(msg, hospital)
    if reply.has_error():
        raise RuntimeError(f"audit: hospital {pid} failed to train while measuring the canary norm: "
                           f"{reply.error.reason}")
    sent = reply.content[msgs.ARRAYS]
    got = msg.content[msgs.ARRAYS]
    total = 0.0
    for name in got.keys():
        before = np.asarray(got[name].numpy())
        if np.issubdtype(before.dtype, np.floating):
            total += float(np.square(np.asarray(sent[name].numpy()).astype(np.float64) - before).sum())
    return float(np.sqrt(total))


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
        return _canary_reply(msg, index, context)
    if plan()["mode"] == "sample":
        return _train_with_canaries(msg, context)
    return node.app(msg, _hospital_context(context))


def _train_with_canaries(msg: Message, context: Context) -> Message:
    """The hospital's own train handler, its steps carrying its gradient canaries; their scores for the round."""
    from client.local_training import STEP_OBSERVER
    from shared_models.settings.run_settings import RunSettings

    the_plan, pid = plan(), str(context.node_config.get("partition-id", ""))
    mine = [i for i, c in enumerate(the_plan["canaries"]) if str(c["node"]) == pid]
    if not mine:
        return node.app(msg, context)
    settings = RunSettings.from_config(context.run_config)
    canaries = GradientCanaries([the_plan["canaries"][i]["seed"] for i in mine], [the_plan["coins"][i] for i in mine],
                                default_norm=settings.dp_max_grad_norm)
    token = STEP_OBSERVER.set(canaries)
    try:
        reply = node.app(msg, context)
    finally:
        STEP_OBSERVER.reset(token)
    if reply.has_error() or msgs.ARRAYS not in reply.content:  # declined (its budget): no step, nothing released
        return reply
    if canaries.steps == 0:
        raise RuntimeError(f"audit: hospital {pid} trained without a step through its optimizer (the audit's seam "
                           "was bypassed; vectorised-clients cannot carry gradient canaries)")
    line = {"round": int(msg.content[msgs.CONFIG].get(msgs.SERVER_ROUND, 0)), "canaries": mine,
            "steps": canaries.steps, "sample_rate": canaries.sample_rate, "clipping_norm": canaries.canary_norm,
            "scores": canaries.scores.tolist(), "released": canaries.released.tolist(),
            "inclusions": canaries.inclusions.tolist()}
    with open(updates_path(os.environ[PLAN_ENV], pid), "a") as out:
        out.write(json.dumps(line) + "\n")
    return reply


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

