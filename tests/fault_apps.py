"""Faulty nodes for real simulations: FedEmo's own ClientApp, with one node's training reply corrupted.

Each ``*_app`` below is a Flower ClientApp that runs the real node code
(``client.client_app.app``, its mods included) for every message, and a
ClientApp mod that corrupts the *training reply* of the node with
``partition-id`` 0, as a broken or hostile hospital would send it (or, for
``crash``, makes the node fail its training rounds: a dropout; for
``exit``, kills the node's process mid-round with ``os._exit``). Tests
hand one to ``run_simulation(client_app="tests.fault_apps:nan_app")``; Ray's
workers import it from the app folder like any ClientApp.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from client.client_app import app as fedemo_app

FAULTY_PARTITION = 0


def _scaled(new: dict[str, np.ndarray], old: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """global + factor x the honest update (factor < 0: the update flipped)."""
    return {k: (old[k] + factor * (new[k].astype(np.float64) - old[k])).astype(new[k].dtype)
            if np.issubdtype(new[k].dtype, np.floating) else new[k] for k in new}


def _shared_update(new: dict[str, np.ndarray], old: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """global + one update every colluder sends: a direction drawn from the global weights (so the same on every
    colluding node), factor x the node's own honest update norm long."""
    floats = [k for k in new if np.issubdtype(new[k].dtype, np.floating)]
    norm = np.sqrt(sum(float(np.square(new[k].astype(np.float64) - old[k]).sum()) for k in floats))
    seed = int.from_bytes(np.ascontiguousarray(old[floats[0]]).tobytes()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng(seed)
    direction = {k: rng.standard_normal(old[k].shape) for k in floats}
    length = np.sqrt(sum(float(np.square(d).sum()) for d in direction.values()))
    return {k: (old[k] + factor * norm * direction[k] / length).astype(new[k].dtype) if k in direction else new[k]
            for k in new}


def _corrupt(fault: str, new: dict[str, np.ndarray], old: dict[str, np.ndarray],
             server_round: int = 1) -> dict[str, np.ndarray]:
    """The arrays a faulty node sends instead of ``new`` (trained from the global ``old``) in ``server_round``."""
    first = next(iter(new))
    if fault == "flip9":  # flipped, x9: just under update-norm-ratio's 10 x the round's median
        return _scaled(new, old, -9.0)
    if fault == "drift":  # flipped, growing x1.5 a round: never far from the previous round's accepted sizes
        return _scaled(new, old, -(1.5 ** (server_round - 1)))
    if fault == "heavy":  # flipped, of honest size, claiming 10^9 examples (the weight is set in fault_mod)
        return _scaled(new, old, -1.0)
    if fault == "collude":  # the same x10 update from every colluding node
        return _shared_update(new, old, 10.0)
    if fault == "nan":
        return {**new, first: np.full_like(new[first], np.nan)}
    if fault == "inf":
        bad = new[first].copy()
        bad.flat[0] = np.inf
        return {**new, first: bad}
    if fault == "scale":  # the update, multiplied by a million
        return {k: (old[k] + 1e6 * (new[k] - old[k])).astype(new[k].dtype) for k in new}
    if fault == "signflip":  # the update, pointing the other way (an honest norm)
        return {k: (old[k] - (new[k] - old[k])).astype(new[k].dtype) for k in new}
    if fault == "shape":  # one row short, as from a model with one class fewer
        last = list(new)[-2]
        return {**new, last: new[last][:-1]}
    if fault == "dtype":
        return {k: v.astype(np.float64) for k, v in new.items()}
    raise ValueError(f"unknown fault {fault!r}")


class NodeCrash(RuntimeError):
    """A node that fails its training round (a dropout, as the coordinator sees it)."""


def fault_mod(fault: str, partitions: tuple[int, ...] = (FAULTY_PARTITION,)):
    def mod(msg: Message, context: Context, call_next) -> Message:
        is_train = msg.metadata.message_type == MessageType.TRAIN
        faulty = int(context.node_config.get("partition-id", -1)) in partitions
        if fault == "crash" and is_train and faulty:
            raise NodeCrash("injected dropout: this node fails every training round")
        if fault == "crash-evaluate" and not is_train and faulty:
            raise NodeCrash("injected failure: this node cannot read its test data")
        if fault == "exit" and is_train and faulty:
            os._exit(17)  # the node's process dies mid-round, as from a segfault or the OOM killer
        if fault == "sleep" and is_train and faulty:  # a node that holds the round (FEDEMO_TEST_SLEEP_S seconds)
            time.sleep(float(os.environ.get("FEDEMO_TEST_SLEEP_S", "30")))
            return call_next(msg, context)
        if fault == "record-pid":  # which process ran this node's message (tests of the local backend)
            with open(Path(os.environ["FEDEMO_TEST_PID_DIR"]) / f"{os.getpid()}.txt", "a") as out:
                out.write(f"{msg.metadata.message_type} {context.node_config['partition-id']}\n")
            return call_next(msg, context)
        old = {k: a.numpy() for k, a in msg.content["arrays"].items()} if is_train and faulty else None
        reply = call_next(msg, context)
        if old is None or reply.has_error():
            return reply
        new = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        server_round = int(msg.content["config"].get("server-round", 1)) if "config" in msg.content else 1
        reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                               for k, v in _corrupt(fault, new, old, server_round).items()})
        if fault == "heavy":
            reply.content["metrics"]["num-examples"] = 10**9
        return reply

    return mod


def faulty_app(fault: str, partitions: tuple[int, ...] = (FAULTY_PARTITION,)) -> ClientApp:
    return app_with_mod(fault_mod(fault, partitions))


def app_with_mod(mod) -> ClientApp:
    """FedEmo's own ClientApp behind one misbehaving mod (tests/overflow_app.py uses it too)."""
    app = ClientApp(mods=[mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return fedemo_app(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return fedemo_app(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return fedemo_app(msg, context)

    return app


nan_app = faulty_app("nan")
inf_app = faulty_app("inf")
scale_app = faulty_app("scale")
signflip_app = faulty_app("signflip")
shape_app = faulty_app("shape")
dtype_app = faulty_app("dtype")
crash_app = faulty_app("crash")  # 1 of 5 nodes: 20% dropout
crash_half_app = faulty_app("crash", (0, 1))  # 2 of 4 nodes: 50% dropout
exit_app = faulty_app("exit")  # node 0's process dies in every training round
record_pid_app = faulty_app("record-pid")  # every node honest; each message's process id written down
# hostile nodes inside the screen's older limits (issue 20; tests/test_byzantine.py, docs/deployment.md "Hostile nodes")
flip9_app = faulty_app("flip9")  # node 0: the update flipped, x9
heavy_app = faulty_app("heavy")  # node 0: flipped, honest size, num-examples 10^9
collude_app = faulty_app("collude", (0, 1))  # nodes 0 and 1: the same x10 update
drift_app = faulty_app("drift")  # node 0: flipped, x1.5 more each round
crash_evaluate_all_app = faulty_app("crash-evaluate", tuple(range(1000)))  # every node fails every evaluation
sleep_app = faulty_app("sleep")  # node 0 sleeps FEDEMO_TEST_SLEEP_S seconds before training
