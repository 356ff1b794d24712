"""The local simulation backend (simulations/engine/local_backend.py) in real Flower simulations.

It replaces Ray's actor pool under Flower's own engine: a few worker
processes that load the ClientApp once and keep it, and every node's cached
data, for the whole run. These tests check what it promises: workers start
once, not per round; a node whose process dies is answered with an error
naming it and a fresh worker takes its place; one worker on a GPU; and the
engine's stop event wakes on messages without reading threading.Event's
inside. (The Flower internals the engine relies on: tests/test_flower_seams.py.)
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from shared_models.settings.run_settings import RunSettings
from simulations.run_config import load_run_config
from simulations.simulate import local_workers, run_simulation

REPO = Path(__file__).resolve().parents[1]


def test_the_engine_stop_event_wakes_on_messages_and_reads_nothing_of_threading_inside():
    """nudge ends a timed wait (flag unset) or the next one, never an untimed wait; set ends every wait."""
    from simulations.engine.flower_seam import EngineStopEvent

    event = EngineStopEvent()
    event.nudge()  # before anyone waits: the next timed wait ends at once, not after its timeout
    assert event.wait(timeout=600) is False
    results: list[bool] = []
    timed = threading.Thread(target=lambda: results.append(event.wait(timeout=600)))
    untimed = threading.Thread(target=lambda: results.append(event.wait()))
    timed.start()
    untimed.start()
    while timed.is_alive():
        event.nudge()
        timed.join(0.05)
    assert results == [False] and untimed.is_alive()  # a message wakes the engine's poll, not its final wait
    event.set()
    untimed.join(60)
    assert results == [False, True] and event.wait(timeout=600) is True
    source = (REPO / "simulations" / "engine" / "flower_seam.py").read_text()
    assert "._cond" not in source and "._flag" not in source


def settings_with(**overrides) -> RunSettings:
    return load_run_config(REPO / "configs" / "quickstart.toml", {k.replace("_", "-"): v for k, v in overrides.items()})[1]


def test_one_worker_on_a_gpu_and_one_per_reserved_cores_on_cpu():
    assert local_workers(settings_with(device="cuda")) == 1  # one CUDA context for every virtual node
    assert local_workers(settings_with(device="cpu", client_num_cpus=1.0, num_supernodes=1, min_available_nodes=1)) == 1
    cpu = settings_with(device="cpu", client_num_cpus=1.0, num_supernodes=50)
    import os

    assert local_workers(cpu) == len(os.sched_getaffinity(0))
    assert local_workers(settings_with(device="cpu", simulation_workers=3)) == 3


def simulate(tmp_path: Path, app: str, name: str, **overrides) -> Path:
    config = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
              "synth-samples": 600, "num-supernodes": 4, "min-available-nodes": 4, "num-server-rounds": 3,
              "simulation-backend": "local", "simulation-workers": 2,
              **{k.replace("_", "-"): v for k, v in overrides.items()}}
    return run_simulation(REPO / "configs" / "quickstart.toml", config, client_app=f"tests.fault_apps:{app}")


@pytest.mark.slow
def test_workers_start_once_and_serve_every_node_in_every_round(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("FEDEMO_TEST_PID_DIR", str(pids))  # the spawned workers inherit it
    run_dir = simulate(tmp_path, "record_pid_app", "pids")
    handled = {path.stem: path.read_text().split("\n")[:-1] for path in pids.glob("*.txt")}
    assert 1 <= len(handled) <= 2, handled  # two workers at most, for 4 nodes x 3 rounds: no per-round start
    trained = sorted(line for lines in handled.values() for line in lines if line.startswith("train"))
    assert len(trained) == 4 * 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["engine"]["backend"] == "local" and summary["engine"]["workers"] == 2
    assert summary["engine"]["workers_replaced"] == 0
    assert summary["engine"]["peak_rss_mib"]["workers"] and summary["engine"]["peak_rss_mib"]["total"] > 0


@pytest.mark.slow
def test_a_node_whose_process_dies_is_named_and_replaced_and_the_rest_keep_training(tmp_path):
    run_dir = simulate(tmp_path, "exit_app", "exit")  # node 0's process calls os._exit(17) in every training round
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for entry in rounds[1:]:
        train = entry["train"]
        assert [f.get("client") for f in train["failures"]] == ["0"]
        assert "died (exit code 17)" in train["failures"][0]["reason"]
        assert sorted(c["client"] for c in train["clients"]) == ["1", "2", "3"]  # healthy nodes, every round
        assert entry["evaluate"]["clients"] and len(entry["evaluate"]["clients"]) == 4  # node 0 still evaluates
    assert rounds[-1]["loss"] < rounds[0]["loss"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["engine"]["workers_replaced"] == 3


def test_gpu_figures_come_from_nvidia_smi_samples(tmp_path, monkeypatch):
    """The sampler runs the real ``nvidia-smi`` command line; here a stand-in script on PATH answers it."""
    from simulations.engine.gpu_usage import GpuSampler

    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '37, 1024'\necho '12, 2048'\n")  # two GPUs: the busiest one is kept
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    assert GpuSampler.available()
    with GpuSampler(interval_s=0.05) as sampler:
        __import__("time").sleep(0.5)
    figures = sampler.figures()
    assert figures["gpu_util_mean_pct"] == 37.0 and figures["gpu_memory_used_max_mib"] == 1024.0
    assert figures["gpu_samples"] >= 2
    from simulations.simulate import gpu_line

    line = gpu_line({"workers": 1, "gpu": figures, "peak_cuda_mib": [812.4]})
    assert line == "GPU: utilisation 37% on average (37% at most), 1024 MiB used at most; torch's peak per worker 812 MiB (1 worker(s), one CUDA context each)"


def test_a_workers_peak_memory_is_its_own_not_the_coordinators_that_started_it():
    """Linux keeps ru_maxrss across fork and exec: a worker started by a 300 MB parent reported >= 300 MB."""
    import subprocess
    import sys

    held = bytearray(300 * 2**20)
    for i in range(0, len(held), 4096):  # resident, not just reserved
        held[i] = 1
    code = "from simulations.engine.local_backend import peak_rss_mib; print(peak_rss_mib())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    from simulations.engine.local_backend import peak_rss_mib

    assert 0 < float(out.stdout) < 250, out.stdout  # the child imports little: far below the parent's 300 MB
    assert peak_rss_mib() >= 300
    del held


_EARLIER_WORK_THEN_A_RUN = """
import json, sys
from pathlib import Path
from simulations.engine.local_backend import peak_rss_mib
from simulations.simulate import run_simulation

held = bytearray(2048 * 2**20)
for i in range(0, len(held), 4096):  # resident, not just reserved
    held[i] = 1
del held  # returned to the system: the process's current memory falls, its high-water mark does not
before = peak_rss_mib()
tmp = Path(sys.argv[1])
run_dir = run_simulation(Path(sys.argv[2]) / "configs" / "quickstart.toml", {
    "data-dir": str(tmp / "fer"), "runs-dir": str(tmp / "runs"), "run-name": "peak", "synth-samples": 200,
    "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1, "simulation-backend": "local",
    "simulation-workers": 1})
engine = json.loads((run_dir / "summary.json").read_text())["engine"]
print(json.dumps({"before": before, "coordinator": engine["peak_rss_mib"]["coordinator"],
                  "since": engine.get("coordinator_peak_since")}))
"""


@pytest.mark.slow
def test_a_runs_coordinator_peak_is_the_runs_own_not_what_its_process_held_before(tmp_path):
    """A benchmark runs several simulations in one process: the coordinator's peak (VmHWM) kept the 4 GB an earlier
    model's loops had held, and the README reported it as the voice run's memory."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _EARLIER_WORK_THEN_A_RUN, str(tmp_path), str(REPO)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["before"] >= 2048, figures
    assert 0 < figures["coordinator"] < figures["before"] - 1024, figures  # the run itself holds far less than 2 GB
    assert figures["since"] == "run start", figures
