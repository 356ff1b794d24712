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
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from client.client_app import app as fedemo_app

FAULTY_PARTITION = 0


def _corrupt(fault: str, new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays a faulty node sends instead of ``new`` (trained from the global ``old``)."""
    first = next(iter(new))
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
        if fault == "exit" and is_train and faulty:
            os._exit(17)  # the node's process dies mid-round, as from a segfault or the OOM killer
        if fault == "record-pid":  # which process ran this node's message (tests of the local backend)
            with open(Path(os.environ["FEDEMO_TEST_PID_DIR"]) / f"{os.getpid()}.txt", "a") as out:
                out.write(f"{msg.metadata.message_type} {context.node_config['partition-id']}\n")
            return call_next(msg, context)
        old = {k: a.numpy() for k, a in msg.content["arrays"].items()} if is_train and faulty else None
        reply = call_next(msg, context)
        if old is None or reply.has_error():
            return reply
        new = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                               for k, v in _corrupt(fault, new, old).items()})
        return reply

    return mod


def faulty_app(fault: str, partitions: tuple[int, ...] = (FAULTY_PARTITION,)) -> ClientApp:
    app = ClientApp(mods=[fault_mod(fault, partitions)])

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
