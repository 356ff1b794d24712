"""How many message threads Flower's engine runs: its own cap for every backend, lifted for vectorised clients.

simulations/engine/flower_seam.py ``engine_threads`` and local_backend's ``num_workers`` say why; this holds
them to the installed Flower: if its engine stops building an unsized ``ThreadPoolExecutor()``, these fail.
"""

from __future__ import annotations

import inspect
import os
import threading

from flwr.server.superlink.fleet.vce import vce_api

from simulations.engine.flower_seam import engine_threads


def _threads_run(executor_factory, submitted: int) -> int:
    """How many of ``submitted`` never-ending loops an executor from ``executor_factory`` runs at once."""
    started, release = [], threading.Event()
    lock = threading.Lock()

    def loop() -> None:
        with lock:
            started.append(1)
        release.wait(30)

    with executor_factory() as executor:
        futures = [executor.submit(loop) for _ in range(submitted)]
        release.wait(0.5)  # enough for every thread the pool will start to take a loop
        running = len(started)
        release.set()
        for future in futures:
            future.result(30)
    return running


def test_flowers_engine_runs_min_32_cores_plus_4_message_loops_unless_engine_threads_sizes_it():
    source = inspect.getsource(vce_api.run_api)
    assert "ThreadPoolExecutor()" in source and "range(backend.num_workers)" in source  # unsized, whatever is asked
    cap = min(32, (os.cpu_count() or 1) + 4)
    assert _threads_run(lambda: vce_api.ThreadPoolExecutor(), cap + 10) == cap  # the plain local backend's lot
    with engine_threads(cap + 10):
        assert _threads_run(lambda: vce_api.ThreadPoolExecutor(), cap + 10) == cap + 10  # vectorised clients
    assert vce_api.ThreadPoolExecutor.__name__ == "ThreadPoolExecutor"  # restored after the block
