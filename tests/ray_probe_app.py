"""FedEmo's own ClientApp, noting which Ray node ran each message (for tests/test_ray_cluster.py).

A mod appends ``<ray node id> <pid>`` to ``<runs-dir>/ray-probe/<node id>.txt`` for every message, so a
test can tell whether a simulation's clients ran on every node of a Ray cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
from flwr.app import Context, Message

from tests.fault_apps import app_with_mod


def _note_ray_node(message: Message, context: Context, call_next) -> Message:
    folder = Path(str(context.run_config["runs-dir"])) / "ray-probe"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{context.node_id}.txt", "a", encoding="utf-8") as out:
        out.write(f"{ray.get_runtime_context().get_node_id()} {os.getpid()}\n")
    return call_next(message, context)


app = app_with_mod(_note_ray_node)  # a plain assignment: Flower finds `app` by reading the source
