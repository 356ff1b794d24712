"""A lean simulation backend for Flower's virtual-client engine: a few long-lived worker processes.

Flower's engine (``flwr.server.superlink.fleet.vce``) hands every message
for a virtual node to a ``Backend``; Flower 1.41 ships only Ray's actor pool.
This backend keeps the engine (its link state, queues, node contexts and
worker threads) and replaces only where a ClientApp runs:

* ``workers`` plain processes, started once per run, all at once. On Linux
  they fork from a ``forkserver`` (a single-threaded process that has
  imported the ClientApp's module once; the engine's threads make a plain
  ``fork`` of this process unsafe): a worker
  starts in well under a second, a replacement too, and torch's pages are
  shared among them. Elsewhere they ``spawn``. Each keeps the ClientApp, and
  everything the app caches per process (partitions, decoded features, the
  DP model's fixed features), for every round. No Ray head, no object store,
  no per-round process start.
* A message and its node's context travel to a free worker by pickle over a
  pipe and come back the same way; nothing else is shared.
* On a GPU the default is one worker: one CUDA context for all virtual
  nodes, however many there are.
* A ClientApp that raises is answered like Ray's backend answers it (an
  error reply for that node, the run goes on). A worker process that dies
  (``os._exit``, a segfault, the OOM killer) is replaced by a fresh one and
  its message answered with an error naming the node's partition and the
  exit code, so one crashed node never takes healthy nodes down with it.
* Workers ignore SIGINT/SIGTERM: the first Ctrl-C belongs to the coordinator
  (server/interruption.py), which stops the run and then this backend.

The same ServerApp and ClientApp run unchanged here, under Ray, under
``flwr run`` and on deployed SuperNodes: the backend only decides where the
ClientApp's code executes.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import resource
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

CONFIG_KEY = "local"  # this backend's section of Flower's backend config


@dataclass
class WorkerPeak:
    """What one worker process used at its peak (reported when it stops)."""

    rss_mib: float
    cuda_mib: float = 0.0
    pss_mib: float = 0.0  # proportional set size at the end: shared library pages split among the processes


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Any  # multiprocessing.connection.Connection
    handled: int = 0


@dataclass
class BackendStats:
    """Filled in as the run goes: the figures a benchmark prints."""

    workers_started: int = 0
    workers_replaced: int = 0
    messages: int = 0
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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def pss_mib() -> float:
    """This process's proportional set size (Linux); 0 where /proc cannot tell.

    RSS counts torch's shared libraries in full in every worker; PSS splits
    them among the processes sharing them, so the sum over processes is the
    memory the simulation really holds.
    """
    try:
        for line in open("/proc/self/smaps_rollup", encoding="ascii"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cuda_peak_mib() -> float:
    torch = sys.modules.get("torch")  # only if the ClientApp used torch
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0.0
    return torch.cuda.max_memory_allocated() / 2**20


def worker_main(conn, reference: str, app_dir: str, environment: dict[str, str]) -> None:
    """A worker process: load the ClientApp once, then answer messages until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C and stops us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(environment)
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
            conn.send(("stopped", WorkerPeak(_peak_rss_mib(), _cuda_peak_mib(), pss_mib())))
            return
        message, context = request
        try:
            reply = app(message=message, context=context)
        except Exception as err:  # noqa: BLE001 - one node's failure is its own error reply
            conn.send(("error", f"{type(err).__name__}: {err}"))
            continue
        conn.send(("ok", (reply, context)))


def _process_context(reference: str):
    """``forkserver`` preloaded with the ClientApp's module where there is one (Linux), else ``spawn``."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    # Takes effect when this process starts its fork server (the first backend in it); later ones reuse it.
    context.set_forkserver_preload([reference.partition(":")[0]])
    return context


class LocalBackend(Backend):
    """Flower ``Backend`` running ClientApps in a pool of long-lived local worker processes.

    Backend config (``backend_config["local"]``): ``client_app`` (the
    ``module:attribute`` reference), ``app_dir``, ``workers`` (processes;
    also how many messages Flower's engine hands over at once) and
    optionally ``environment`` (variables every worker gets on top of this
    process's).
    """

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        settings = dict(backend_config.get(CONFIG_KEY, {}))
        self.reference = str(settings["client_app"])
        self.app_dir = str(settings.get("app_dir", ""))
        self.workers = max(1, int(settings.get("workers", 1)))
        # A fork server outlives the run that started it: every worker gets this process's environment as it is now.
        self.environment = {**os.environ, **{str(k): str(v) for k, v in dict(settings.get("environment", {})).items()}}
        self.stats = BackendStats()
        self._context = _process_context(self.reference)
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    # -- Flower's Backend interface -------------------------------------------------
    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Start the workers; each loads the ClientApp by reference (``app_fn`` is not picklable)."""
        del app_fn
        if self._all:  # Flower's engine calls build() again; the workers already run
            return
        pending = [self._launch() for _ in range(self.workers)]  # all start at once, then report ready
        for launched in pending:
            self._idle.put(self._await_ready(*launched))

    @property
    def num_workers(self) -> int:
        return self.workers

    def is_worker_idle(self) -> bool:
        return not self._idle.empty()

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        worker = self._idle.get()
        try:
            worker.conn.send((message, context))
            status, payload = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self._retire(worker)
            partition = context.node_config.get("partition-id", "?")
            raise ClientAppException(f"the node process for partition {partition} died "
                                     f"(exit code {code}); a fresh worker replaces it") from None
        worker.handled += 1
        self._idle.put(worker)
        self.stats.messages += 1
        if status == "ok":
            return payload
        raise ClientAppException(str(payload))

    def terminate(self) -> None:
        """Ask every worker for its peak memory and let it exit; kill what does not."""
        with self._lock:
            workers, self._all = list(self._all), []
        for worker in workers:
            try:
                worker.conn.send(None)
                if worker.conn.poll(10):
                    status, peak = worker.conn.recv()
                    if status == "stopped":
                        self.stats.peaks.append(peak)
            except (EOFError, OSError):
                pass
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()

    # -- workers ----------------------------------------------------------------------
    def _start_worker(self) -> _Worker:
        return self._await_ready(*self._launch())

    def _launch(self):
        parent, child = self._context.Pipe()
        process = self._context.Process(target=worker_main, name="fedemo-node-worker", daemon=True,
                                        args=(child, self.reference, self.app_dir, self.environment))
        process.start()
        child.close()
        return process, parent

    def _await_ready(self, process, parent) -> _Worker:
        try:
            status, payload = parent.recv()
        except EOFError:
            status, payload = "load-error", f"the worker exited with code {process.join(10) or process.exitcode}"
        if status != "ready":
            process.join(timeout=10)
            raise RuntimeError(f"the ClientApp {self.reference} could not be loaded in a worker: {payload}")
        worker = _Worker(process, parent)
        with self._lock:
            self._all.append(worker)
        self.stats.workers_started += 1
        return worker

    def _retire(self, worker: _Worker) -> int | None:
        """A worker died mid-message: reap it, start a replacement, return the exit code."""
        worker.process.join(timeout=10)
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        self.stats.workers_replaced += 1
        self._idle.put(self._start_worker())
        return worker.process.exitcode
