"""A lean simulation backend for Flower's virtual-client engine: a few long-lived worker processes.

``workers`` plain processes, started once per run, each loading the ClientApp once and caching its share of
the nodes' data (node = partition-id modulo workers; one worker, one CUDA context on a GPU). Messages travel
by pickle over socket pairs. A ClientApp error is answered as Ray's backend answers it; a dead worker is
replaced and its message answered with an error naming the node. With ``vectorised`` (``vectorised-clients``)
a worker's train messages that arrive together go as one group (simulations/engine/client_groups.py: each
node's message and reply as alone, their training batched). Details: docs/design_notes.md.
"""

from __future__ import annotations

import importlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from simulations.engine.flower_seam import Backend, BackendConfig, ClientAppException, stopped_reply

CONFIG_KEY = "local"  # this backend's section of Flower's backend config
STOPPED = "the simulation stopped while this node was working"
ENGINE_THREADS_PER_WORKER = 16  # asked per worker; Flower runs min(32, cores + 4) in all (LocalBackend.num_workers)
GROUP_THREADS_PER_WORKER = 64  # vectorised clients: messages in hand per worker (flower_seam.engine_threads)
GATHER_QUIET_S = 0.05  # a group is sent once no further train message for its worker arrived for this long
GATHER_MAX_S = 2.0


@dataclass
class _Pending:
    """A train message waiting for its worker's next group."""

    message: Message
    context: Context
    outcome: tuple | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class WorkerPeak:
    """What one worker process used at its peak (reported when it stops)."""

    rss_mib: float
    cuda_mib: float = 0.0
    pss_mib: float = 0.0  # proportional set size at the end: shared library pages split among the processes


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection


@dataclass
class BackendStats:
    """Filled in as the run goes: the figures a benchmark prints."""

    workers_started: int = 0
    workers_replaced: int = 0
    messages: int = 0
    groups: list[int] = field(default_factory=list)  # vectorised clients: the size of each group of train messages
    peaks: list[WorkerPeak] = field(default_factory=list)


def load_client_app(reference: str, app_dir: str) -> ClientApp:
    """``module:attribute`` -> the ClientApp object, importing from ``app_dir`` first."""
    module_name, _, attribute = reference.partition(":")
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    app = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(app, ClientApp):
        raise TypeError(f"{reference} is a {type(app).__name__}, not a flwr ClientApp")
    return app


def _proc_kib(path: str, field: str) -> int | None:
    """A ``field:  N kB`` line of a /proc file of this process, in KiB; None where /proc cannot tell."""
    try:
        for line in open(path, encoding="ascii"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's own peak resident memory (Linux ``VmHWM``; ``ru_maxrss`` where /proc cannot tell).

    Not ``ru_maxrss``: Linux keeps it across ``fork`` and ``execve``, so a worker
    started by a coordinator holding 2 GB would report at least 2 GB.
    """
    kib = _proc_kib("/proc/self/status", "VmHWM:")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def reset_peak_rss() -> bool:
    """Start this process's ``VmHWM`` again from its current resident memory (Linux 4.0+: ``clear_refs`` 5), so
    that ``peak_rss_mib`` is the peak from now on (what the process holds now included), not the peak of
    memory it used and freed before (a benchmark or a test runs several simulations in one process). False
    where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def pss_mib() -> float:
    """This process's proportional set size (Linux); 0 where /proc cannot tell.

    RSS counts torch's shared libraries in full in every worker; PSS splits
    them among the processes sharing them, so the sum over processes is the
    memory the simulation really holds.
    """
    return (_proc_kib("/proc/self/smaps_rollup", "Pss:") or 0) / 1024


def _cuda_peak_mib() -> float:
    torch = sys.modules.get("torch")  # only if the ClientApp used torch
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0
    return torch.cuda.max_memory_allocated() / 2**20


def worker_main(conn: Connection, reference: str, app_dir: str) -> None:
    """A worker process: load the ClientApp once, then answer messages until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        app = load_client_app(reference, app_dir)
    except Exception as err:  # noqa: BLE001 - reported to the engine, which names the app
        conn.send(("load-error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the backend went away
            return
        if request is None:
            conn.send(("stopped", (peak_rss_mib(), _cuda_peak_mib(), pss_mib())))  # plain values: no class to unpickle
            conn.close()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # skip the interpreter's teardown of torch and friends (seconds, nothing to save)
        if isinstance(request, list):  # train messages of several nodes: their training vectorised
            from simulations.engine.client_groups import run_group
            conn.send(("group", run_group(app, request)))
            continue
        message, context = request
        try:
            reply = app(message=message, context=context)
        except Exception as err:  # noqa: BLE001 - one node's failure is its own error reply
            conn.send(("error", str(err) or type(err).__name__))  # as Ray's backend words it
            continue
        conn.send(("ok", (reply, context)))


class LocalBackend(Backend):
    """Flower ``Backend`` running ClientApps in a pool of long-lived local worker processes.

    Backend config (``backend_config["local"]``): ``client_app`` (the
    ``module:attribute`` reference), ``app_dir``, ``workers`` (processes) and
    optionally ``environment`` (variables every worker gets on top of this
    process's environment).
    """

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        settings = dict(backend_config.get(CONFIG_KEY, {}))
        self.reference = str(settings["client_app"])
        self.app_dir = str(settings.get("app_dir", ""))
        self.workers = max(1, int(settings.get("workers", 1)))
        self.environment = {str(k): str(v) for k, v in dict(settings.get("environment", {})).items()}
        self.vectorised = bool(settings.get("vectorised", False))  # group each worker's train messages
        self._pending: list[list[_Pending]] = [[] for _ in range(self.workers)]
        self.stats = BackendStats()
        self._slots: list[_Worker] = []  # slot i serves the nodes whose partition-id % workers == i
        self._busy = [threading.Lock() for _ in range(self.workers)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- Flower's Backend interface -------------------------------------------------
    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Start the workers; each loads the ClientApp by reference (``app_fn`` is not picklable)."""
        del app_fn
        if self._slots:  # Flower's engine calls build() again; the workers already run
            return
        pending = [self._launch() for _ in range(self.workers)]  # all start at once, then report ready
        self._slots = [self._await_ready(*launched) for launched in pending]

    @property
    def num_workers(self) -> int:
        """Engine threads asked for, each holding one message until its node's worker is free.

        Without vectorised clients this is an upper bound only: Flower 1.41's
        engine runs its message loops in a ``ThreadPoolExecutor()`` of
        min(32, cores + 4) threads whatever is asked (6 on 2 cores), and the
        loops beyond that never start. Lifting the cap for the plain backend
        (``flower_seam.engine_threads``) measured no faster (docs/design_notes.md),
        so it is lifted only for vectorised clients, whose groups need a
        round's messages in hand at once.
        """
        return (GROUP_THREADS_PER_WORKER if self.vectorised else ENGINE_THREADS_PER_WORKER) * self.workers

    def is_worker_idle(self) -> bool:
        return any(not busy.locked() for busy in self._busy)

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the node's message on its own worker (node affinity: its cached data lives there only).

        A node always goes to the same worker, so each worker holds the
        partitions and features of its share of the nodes, not of all of
        them; messages arrive in node order, so the shares interleave and the
        workers stay evenly busy.
        """
        partition = context.node_config.get("partition-id", "?")
        slot = int(partition) % self.workers if str(partition).isdigit() else 0
        if self.vectorised and message.metadata.message_type.split(".")[0] == "train":
            return self._process_in_group(slot, message, context)
        with self._busy[slot]:
            worker = self._slots[slot]
            try:
                worker.conn.send((message, context))
                status, payload = worker.conn.recv()
            except (EOFError, OSError):
                if self._stopping.is_set():  # abort() killed it: the run is over, nobody waits for this reply
                    return stopped_reply(message, STOPPED), context  # a reply, not an exception Flower would log
                code = self._replace(slot)
                raise ClientAppException(f"the node process for partition {partition} died "
                                         f"(exit code {code}); a fresh worker replaces it") from None
        self.stats.messages += 1
        if status == "ok":
            return payload
        raise ClientAppException(str(payload))

    def _process_in_group(self, slot: int, message: Message, context: Context) -> tuple[Message, Context]:
        """Queue the train message for its worker; whichever waiting thread gets the worker sends the group.

        The sender waits until no further message for the worker has arrived for ``GATHER_QUIET_S`` (the
        engine hands a round's messages out within milliseconds), then sends every queued one as one group.
        """
        item = _Pending(message, context)
        with self._lock:
            self._pending[slot].append(item)
        while not item.done.is_set():
            with self._busy[slot]:
                if item.done.is_set():
                    break
                self._gather(slot)
                with self._lock:
                    group, self._pending[slot] = self._pending[slot], []
                self._send_group(slot, group)
        status, payload = item.outcome  # type: ignore[misc]
        if status == "ok":
            return payload
        if status == "stopped":
            return stopped_reply(message, STOPPED), context
        raise ClientAppException(str(payload))

    def _gather(self, slot: int) -> None:
        waited, seen = 0.0, -1
        while waited < GATHER_MAX_S:
            with self._lock:
                count = len(self._pending[slot])
            if count == seen:
                return
            seen = count
            self._stopping.wait(GATHER_QUIET_S)
            waited += GATHER_QUIET_S

    def _send_group(self, slot: int, group: list[_Pending]) -> None:
        """Run ``group`` on the slot's worker (held by the caller) and give each member its outcome."""
        worker = self._slots[slot]
        try:
            worker.conn.send([(p.message, p.context) for p in group])
            status, outcomes = worker.conn.recv()
        except (EOFError, OSError):
            if self._stopping.is_set():
                outcomes = [("stopped", None)] * len(group)
            else:
                code = self._replace(slot)
                partitions = ", ".join(str(p.context.node_config.get("partition-id", "?")) for p in group)
                outcomes = [("error", f"the node process for partitions {partitions} died (exit code {code}); "
                                      "a fresh worker replaces it")] * len(group)
        self.stats.messages += len(group)
        self.stats.groups.append(len(group))
        for pending, outcome in zip(group, outcomes):
            pending.outcome = outcome
            pending.done.set()

    def stop_now(self) -> bool:
        """A second Ctrl-C: kill every worker, busy or idle; messages in hand are answered as stopped.

        Called from a signal handler in the main thread, which may itself hold ``_lock`` (terminate):
        the slots are copied without it.
        """
        self._stopping.set()
        for worker in list(self._slots):
            if worker.process.poll() is None:
                worker.process.kill()
        return True

    def abort(self) -> None:
        """The run is over (or was interrupted): kill the workers still busy with a message.

        Flower's engine waits for every message in hand before it calls
        terminate(); a node in the middle of a long training round would hold
        a Ctrl-C up for as long. Idle workers are left for terminate().
        """
        self._stopping.set()
        for slot, busy in enumerate(self._busy):
            if busy.locked():
                self._slots[slot].process.kill()

    def terminate(self) -> None:
        """Ask every worker for its peak memory and let it exit; kill what does not."""
        with self._lock:
            workers = list(self._slots)
        for worker in workers:
            if worker.process.poll() is not None:  # killed by abort()
                worker.conn.close()
                continue
            try:
                worker.conn.send(None)
                if worker.conn.poll(10):
                    status, peak = worker.conn.recv()
                    if status == "stopped":
                        self.stats.peaks.append(WorkerPeak(*peak))
            except (EOFError, OSError):
                pass
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.conn.close()

    # -- workers ----------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        return self._await_ready(*self._launch())

    def _launch(self) -> tuple[subprocess.Popen, Connection]:
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-m", "simulations.engine.local_backend", str(theirs.fileno()), self.reference, self.app_dir],
            pass_fds=(theirs.fileno(),), env={**os.environ, **self.environment}, cwd=self.app_dir or None)
        theirs.close()
        return process, Connection(ours.detach())

    def _await_ready(self, process: subprocess.Popen, conn: Connection) -> _Worker:
        try:
            status, payload = conn.recv()
        except EOFError:
            status, payload = "load-error", f"the worker exited with code {process.wait()}"
        if status != "ready":
            process.wait(timeout=10)
            raise RuntimeError(f"the ClientApp {self.reference} could not be loaded in a worker: {payload}")
        self.stats.workers_started += 1
        return _Worker(process, conn)

    def _replace(self, slot: int) -> int | None:
        """The slot's worker died mid-message: reap it, start a fresh one there, return the exit code."""
        worker = self._slots[slot]
        try:
            code = worker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # its socket broke but it lives on: stop it for good
            worker.process.kill()
            code = worker.process.wait()
        worker.conn.close()
        fresh = self._start_worker()
        with self._lock:
            self._slots[slot] = fresh
        self.stats.workers_replaced += 1
        return code


if __name__ == "__main__":  # a worker: python -m simulations.engine.local_backend FD MODULE:ATTRIBUTE APP_DIR
    worker_main(Connection(int(sys.argv[1])), sys.argv[2], sys.argv[3])
