"""The engine seam: every private piece of Flower's simulation engine FedEmo uses, and only here.

Flower 1.41's ``start_vce`` always builds a ``RayBackend`` but its ``run_api`` takes any ``Backend``: this module
assembles Flower's own pieces, in Flower's order, into a simulation that differs only in the backend
(``run_on_backend``; ``run_on_ray`` is Flower's own). ``PRIVATE_NAMES``, ``PRIVATE_CALLS`` and
``PRIVATE_ATTRIBUTES`` list every non-public name used; tests/test_flower_seams.py checks them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from queue import Empty, Queue
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES, ErrorCode
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.date import now
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

__all__ = ["Backend", "BackendConfig", "ClientAppException", "new_run", "run_on_backend", "run_on_ray",
           "stopped_reply"]

VCE = "flwr.server.superlink.fleet.vce"
LINKSTATE = "flwr.server.superlink.linkstate"
RUN_SIMULATION = "flwr.simulation.run_simulation"

# Every name imported from a module outside Flower's public API (flwr.app, flwr.clientapp, flwr.serverapp):
# (module, name). tests/test_flower_seams.py imports each and checks this list against the imports above.
PRIVATE_NAMES = [
    ("flwr.clientapp.client_app", "ClientAppException"),
    ("flwr.common.constant", "RUN_ID_NUM_BYTES"), ("flwr.common.constant", "SUPERLINK_NODE_ID"),
    ("flwr.common.constant", "TASK_ID_NUM_BYTES"), ("flwr.common.constant", "ErrorCode"),
    ("flwr.proto.task_pb2", "Task"),
    (f"{VCE}", "vce_api"), (f"{VCE}.backend", "Backend"), (f"{VCE}.backend", "BackendConfig"),
    (f"{VCE}.metrics", "VceMetrics"),
    (LINKSTATE, "LinkStateFactory"), (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState"),
    (f"{LINKSTATE}.in_memory_linkstate", "RunRecord"), (f"{LINKSTATE}.utils", "generate_rand_int_from_bytes"),
    (RUN_SIMULATION, "_run_simulation"), (RUN_SIMULATION, "run_serverapp_th"),
    ("flwr.supercore.constant", "FLWR_IN_MEMORY_DB_NAME"), ("flwr.supercore.constant", "NOOP_FEDERATION_ID"),
    ("flwr.supercore.date", "now"), ("flwr.supercore.object_store", "ObjectStoreFactory"),
    ("flwr.supercore.run", "Run"), ("flwr.supercore.task_identity", "TaskIdentity"),
    ("flwr.supercore.telemetry", "EventType"), ("flwr.superlink.federation", "NoOpFederationManager"),
    ("flwr.superlink.grid", "InMemoryGrid"),
]

# What we call, construct or override: (module, name or Class.member, the parameters we pass or define).
PRIVATE_CALLS = [
    (RUN_SIMULATION, "_run_simulation",
     ["num_supernodes", "exit_event", "client_app_attr", "server_app_attr", "backend_name", "backend_config",
      "server_app_context", "app_dir", "is_app", "run"]),
    (RUN_SIMULATION, "run_serverapp_th",
     ["server_app_attr", "server_app", "server_app_context", "grid", "app_dir", "f_stop", "exception_queue",
      "enable_tf_gpu_growth", "ctx_queue"]),
    (f"{VCE}.vce_api", "run_api",
     ["app_fn", "backend_fn", "nodes_mapping", "state_factory", "node_info_stores", "f_stop", "metrics"]),
    (f"{VCE}.vce_api", "_register_nodes", ["num_nodes", "state_factory"]),
    (f"{VCE}.vce_api", "_register_node_info_stores", ["nodes_mapping", "run", "app_dir"]),
    (f"{VCE}.backend", "Backend.__init__", ["self", "backend_config"]),
    (f"{VCE}.backend", "Backend.build", ["self", "app_fn"]),
    (f"{VCE}.backend", "Backend.is_worker_idle", ["self"]),
    (f"{VCE}.backend", "Backend.process_message", ["self", "message", "context"]),
    (f"{VCE}.backend", "Backend.terminate", ["self"]),
    (f"{VCE}.metrics", "VceMetrics", []),
    (LINKSTATE, "LinkStateFactory.__init__", ["self", "database", "federation_manager", "objectstore_factory"]),
    (LINKSTATE, "LinkStateFactory.state", ["self"]),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState.__init__", ["self", "federation_manager", "object_store"]),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState.get_message_ins", ["self", "node_id", "limit", "run_id"]),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState._check_stored_messages", ["self", "message_ids"]),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState.store_message_ins", ["self", "message"]),
    (f"{LINKSTATE}.in_memory_linkstate", "RunRecord", ["run"]),
    (f"{LINKSTATE}.utils", "generate_rand_int_from_bytes", ["num_bytes"]),
    ("flwr.supercore.run", "Run.create_empty", ["run_id"]),
    ("flwr.superlink.grid", "InMemoryGrid.__init__", ["self", "state_factory", "pull_interval"]),
    ("flwr.superlink.grid", "InMemoryGrid.set_run", ["self", "run"]),
    ("flwr.supercore.object_store", "ObjectStoreFactory.store", ["self"]),
    ("flwr.clientapp.client_app", "ClientAppException.__init__", ["self", "message"]),
]

# Flower's state we read or write: (module, Class, attribute), checked on a real instance (or the class).
PRIVATE_ATTRIBUTES = [
    (LINKSTATE, "LinkStateFactory", "state_instance"), (LINKSTATE, "LinkStateFactory", "federation_manager"),
    (LINKSTATE, "LinkStateFactory", "objectstore_factory"),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState", "lock"),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState", "message_ins_store"),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState", "run_ids"),
    (f"{LINKSTATE}.in_memory_linkstate", "InMemoryLinkState", "task_store"),
    ("flwr.supercore.run", "Run", "primary_task_id"), ("flwr.supercore.run", "Run", "federation_id"),
    ("flwr.supercore.run", "Run", "override_config"), ("flwr.supercore.run", "Run", "run_id"),
    ("flwr.supercore.task_identity", "TaskIdentity", "task_id"),
    ("flwr.supercore.task_identity", "TaskIdentity", "run_id"),
    ("flwr.supercore.task_identity", "TaskIdentity", "node_id"),
    ("flwr.supercore.telemetry", "EventType", "PYTHON_API_RUN_SIMULATION_LEAVE"),
    ("flwr.common.constant", "ErrorCode", "CLIENT_APP_RAISED_EXCEPTION"),
    (VCE, "vce_api", "ThreadPoolExecutor"),  # engine_threads: the executor run_api builds its threads with
]


class EngineStopEvent(threading.Event):
    """The engine's stop event, whose timed waits also end when the coordinator sends messages.

    Flower's engine looks for new messages every 0.1 s and sleeps between
    looks by waiting on its stop event with a timeout (``add_messages_to_queue``).
    ``nudge`` ends such a timed wait at once (the flag stays unset), or the
    next one if none is under way, so a round's messages do not wait for the
    next tick; waits without a timeout last until ``set``. Built on a
    Condition of its own: nothing of ``threading.Event``'s inside is read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wake = threading.Condition()
        self._nudged = False

    def nudge(self) -> None:
        with self._wake:
            self._nudged = True
            self._wake.notify_all()

    def set(self) -> None:
        super().set()
        with self._wake:
            self._wake.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        with self._wake:
            if not self._nudged and not self.is_set():
                self._wake.wait(timeout)
            self._nudged = False
        return self.is_set()


class NodeFilteredLinkState(InMemoryLinkState):
    """Flower's in-memory link state, with ``get_message_ins`` checking only the asking node's messages.

    The engine asks for every node's next message ten times a second. Flower
    1.41's in-memory state answers each question by running its expiry and
    federation checks on every stored message of every node, under the
    state's lock: 50 nodes x 50 pending messages is 2,500 checks per tick,
    CPU taken from the nodes and the lock held against the coordinator. Here a node's question checks that node's undelivered
    messages only (the same checks, the same answer); the others are checked
    when their own node asks or when their replies are pulled.
    """

    def __init__(self, *args, on_message_stored: Callable[[], None] = lambda: None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_message_stored = on_message_stored

    def store_message_ins(self, message):  # type: ignore[no-untyped-def]
        stored = super().store_message_ins(message)
        self.on_message_stored()  # the engine looks for it now, not at its next 0.1 s tick
        return stored

    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list:
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        found = []
        with self.lock:
            for msg_id, message in list(self.message_ins_store.items()):
                if message.metadata.dst_node_id != node_id or message.metadata.delivered_at != "":
                    continue
                self._check_stored_messages({msg_id})  # expired, or a node left the federation: deleted
                if msg_id in self.message_ins_store and (run_id is None or message.metadata.run_id == run_id):
                    found.append(message)
                if limit and len(found) == limit:
                    break
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
        return found


@contextmanager
def engine_threads(count: int) -> Iterator[None]:
    """While in the block, Flower's engine runs ``count`` message threads (the backend's ``num_workers``).

    Flower 1.41's ``run_api`` submits ``num_workers`` message loops to a ``ThreadPoolExecutor()`` built
    without a size, which runs min(32, cores + 4) of them, for every backend (Ray's and the local one): 6 on
    2 cores, whatever the backend asked for; the other loops never start. Vectorised clients need a round's
    messages in hand at once to group them, so ``run_on_backend`` lifts the cap for them only: for the plain
    local backend, 32 messages in hand instead of 6 measured no faster (docs/design_notes.md).
    """
    original = vce_api.ThreadPoolExecutor
    vce_api.ThreadPoolExecutor = functools.partial(original, max_workers=max(1, count))  # type: ignore[misc]
    try:
        yield
    finally:
        vce_api.ThreadPoolExecutor = original  # type: ignore[misc]


def new_run(run_config: dict[str, Any]) -> tuple[Run, Context]:
    """A fresh Flower run carrying ``run_config``, and the ServerApp's context for it."""
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = run_config
    TaskIdentity.task_id = run.primary_task_id
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    return run, context


def stopped_reply(message: Message, reason: str) -> Message:
    """The error reply Flower's engine expects for a node that could not answer (no exception to log)."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


def run_on_ray(*, run: Run, server_context: Context, server_app: str, client_app: str, num_supernodes: int,
               app_dir: str, backend_config: dict[str, Any]) -> None:
    """Flower's own simulation with Ray's actor pool."""
    from flwr.simulation.run_simulation import _run_simulation

    _run_simulation(num_supernodes=num_supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                    client_app_attr=client_app, server_app_attr=server_app, backend_name="ray",
                    backend_config=backend_config, server_app_context=server_context, app_dir=app_dir,
                    is_app=True, run=run)


def run_on_backend(backend: Backend, *, run: Run, server_context: Context, server_app: str, num_supernodes: int,
                   app_dir: str, stop_server: Callable[[str], None]) -> VceMetrics:
    """Flower's simulation loop with ``backend`` running the ClientApps; returns the engine's metrics.

    The backend is built before the ServerApp starts, so a ClientApp that
    cannot load stops the run before any round instead of leaving the
    coordinator waiting for replies that never come. If the engine itself
    fails mid-run, ``stop_server`` asks the ServerApp to stop (it would
    otherwise wait for replies forever) before its thread is joined.
    """
    from flwr.simulation.run_simulation import run_serverapp_th

    backend.build(lambda: None)  # type: ignore[arg-type,return-value]  # workers load the app by reference
    state_factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    f_stop = EngineStopEvent()
    state = state_factory.state_instance = NodeFilteredLinkState(
        state_factory.federation_manager, state_factory.objectstore_factory.store(), on_message_stored=f_stop.nudge)
    if state_factory.state() is not state:  # every part of the engine must share this one state
        raise RuntimeError("Flower's LinkStateFactory no longer keeps its state in state_instance")
    state.run_ids[run.run_id] = RunRecord(run=run)  # type: ignore[attr-defined]  # the in-memory state
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)  # type: ignore
    grid = InMemoryGrid(state_factory=state_factory, pull_interval=0.02)  # replies seen within 20 ms, not 100
    grid.set_run(run)
    server_errors: Queue[BaseException] = Queue()
    contexts: Queue[Context] = Queue()
    metrics = VceMetrics()
    nodes = vce_api._register_nodes(num_nodes=num_supernodes, state_factory=state_factory)
    node_stores = vce_api._register_node_info_stores(nodes_mapping=nodes, run=run, app_dir=app_dir)
    # When the ServerApp ends (done, failed or interrupted), workers still busy are stopped at once.
    abort = getattr(backend, "abort", None)
    if abort is not None:
        threading.Thread(target=lambda: (f_stop.wait(), abort()), name="backend-abort", daemon=True).start()
    server_thread = run_serverapp_th(server_app_attr=server_app, server_app=None, server_app_context=server_context,
                                     grid=grid, app_dir=app_dir, f_stop=f_stop, exception_queue=server_errors,
                                     enable_tf_gpu_growth=False, ctx_queue=contexts)
    engine_failed = True
    # Vectorised clients group the messages in hand: the engine then runs as many threads as the backend asks;
    # otherwise Flower's own min(32, cores + 4) (engine_threads says why).
    threads = engine_threads(backend.num_workers) if getattr(backend, "vectorised", False) else nullcontext()
    try:
        with threads:
            vce_api.run_api(app_fn=lambda: None, backend_fn=lambda: backend,  # type: ignore[arg-type,return-value]
                            nodes_mapping=nodes, state_factory=state_factory, node_info_stores=node_stores,
                            f_stop=f_stop, metrics=metrics)
        engine_failed = False
    finally:
        f_stop.set()
        if engine_failed:
            stop_server("the simulation engine failed")
        server_thread.join()
    try:
        raise server_errors.get_nowait()
    except Empty:
        return metrics
