"""The prepared GPU check (simulations/benchmarks/gpu_check.sh) and what of the CUDA path runs on a CPU machine.

The script itself needs CUDA; here it is run to its preflight (one line, exit 3, nothing written), its
simulate steps' settings are validated as the CLI would, and its report is computed from sampler files in the
format the script writes (nvidia-smi's ``csv,noheader,nounits`` lines with the sampling time in front).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from simulations.benchmarks import gpu_report
from simulations.engine.gpu_usage import GpuSampler, busiest_gpu

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "simulations" / "benchmarks" / "gpu_check.sh"
T0 = 1765036800.0

# As the script's sampler writes them: `date +%s.%N`, then nvidia-smi's own line. GPU 1 is a MIG-enabled card
# (no utilisation: [N/A]); the last line was cut short when the sampler was killed.
GPU_CSV = "\n".join([
    f"{T0 + 0.5:.9f}, 0, 0, 3",
    f"{T0 + 0.5:.9f}, 1, [N/A], 10",
    f"{T0 + 1.0:.9f}, 0, 64, 1200",
    f"{T0 + 1.0:.9f}, 1, [N/A], 10",
    f"{T0 + 1.5:.9f}, 0, 92, 1800",
    f"{T0 + 2.0:.9f}, 0, 80, 1800",
    f"{T0 + 2.5:.9f}, 0, 0, 1800",
    f"{T0 + 3.0:.9f}, 0, 0, 40",
    f"{T0 + 9.0:.9f}, 0, 99, 9000",  # after the step: not its figures
    f"{T0 + 9.5:.9f}, 0, 5",
]) + "\n"
APPS_CSV = "\n".join([f"{T0 + 1.0:.9f}, 4242, 1150", f"{T0 + 1.5:.9f}, 4242, 1790", f"{T0 + 2.0:.9f}, 4242, [N/A]",
                      f"{T0 + 9.0:.9f}, 5151, 8000"]) + "\n"


def _folder(tmp_path: Path, engine: dict, name: str = "face50_vectorised", apps: str = APPS_CSV) -> Path:
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"rounds": 3, "num_supernodes": 50, "engine": engine}))
    (tmp_path / "gpu.csv").write_text(GPU_CSV)
    (tmp_path / "compute_apps.csv").write_text(apps)
    (tmp_path / "steps.csv").write_text(f"{name},{T0:.9f},{T0 + 3.2:.9f},0,{run / 'summary.json'}\n")
    return tmp_path


ENGINE = {"backend": "local", "workers": 1, "peak_cuda_mib": [1712.5]}


def test_the_report_gives_each_steps_wall_clock_utilisation_memory_and_one_context(tmp_path):
    lines = gpu_report.report(_folder(tmp_path, ENGINE))
    assert lines[0] == "face50_vectorised: wall clock 3.2 s"
    # busiest GPU per sample in the step: 0, 64, 92, 80, 0, 0 (GPU 1's [N/A] is no figure); busy span 64..80
    assert lines[1] == ("  GPU utilisation: mean 39.3% over the step, 78.7% while busy; peak 92.0% (6 samples); "
                        "target 70% while busy: met")
    assert lines[2] == "  GPU memory used at most: 1800 MiB (all processes)"
    assert lines[3] == "  CUDA memory per worker (torch's peak): [1712.5]; 1 worker(s), backend local"
    assert lines[4] == "  single CUDA context: yes, all 50 clients in one process (nvidia-smi: pid 4242 1790 MiB)"
    assert len(lines) == 5


def test_the_context_check_counts_processes_and_falls_back_on_torch_where_nvidia_smi_sees_none(tmp_path):
    two = APPS_CSV + f"{T0 + 2.0:.9f}, 4343, 600\n"
    lines = gpu_report.report(_folder(tmp_path / "two", {**ENGINE, "workers": 2}, apps=two))
    assert lines[4] == "  single CUDA context: no, 2 processes (nvidia-smi: pid 4242 1790 MiB, pid 4343 600 MiB)"
    hidden = gpu_report.report(_folder(tmp_path / "hidden", ENGINE, apps=""))  # a container hides the pids
    assert hidden[4] == ("  single CUDA context: yes, all 50 clients in one process (torch: workers that allocated "
                         "CUDA memory (nvidia-smi listed no process))")
    unknown = gpu_report.report(_folder(tmp_path / "unknown", {"backend": "local", "workers": 1}, apps=""))
    assert unknown[3].endswith("none reported; 1 worker(s), backend local")
    assert unknown[4].startswith("  single CUDA context: unknown")


def test_a_failed_step_and_a_missed_target_are_said(tmp_path):
    folder = _folder(tmp_path, ENGINE)
    steps = (folder / "steps.csv").read_text().replace(",0,", ",1,")
    (folder / "steps.csv").write_text(steps)
    (folder / "gpu.csv").write_text(GPU_CSV.replace(", 92, ", ", 20, "))
    lines = gpu_report.report(folder)
    assert lines[0] == "face50_vectorised: wall clock 3.2 s  FAILED (exit status 1; see face50_vectorised.log)"
    assert lines[1].endswith("target 70% while busy: NOT met")  # (64 + 20 + 80) / 3 = 54.7
    assert "54.7% while busy" in lines[1]


def test_the_engine_benchmark_step_lists_each_backends_gpu_figures(tmp_path):
    bench = tmp_path / "engine" / "benchmark.json"
    bench.parent.mkdir()
    bench.write_text(json.dumps({"models": {"face_cnn": {
        "backends": ["local", "local_vectorised"],
        "local": {"warm_round_s": 1.9, "engine": {"gpu": {"gpu_util_mean_pct": 31.0, "gpu_util_max_pct": 55.0},
                                                   "peak_cuda_mib": [640.0]}},
        "local_vectorised": {"warm_round_s": 0.4, "engine": {}},
        "vectorised": {"warm_round_s": 0.3}, "pfl": {"missing": "pfl-research is not installed"}}}}))
    (tmp_path / "steps.csv").write_text(f"engine,{T0:.9f},{T0 + 60:.9f},0,{bench}\n")
    lines = gpu_report.report(tmp_path)
    assert lines[0] == "engine: wall clock 60.0 s"
    assert lines[1] == "  GPU utilisation: not sampled (0 samples)"
    assert lines[2:] == ["    face_cnn local: 1.9 s per warm round, utilisation mean 31.0% (peak 55.0%), torch peak "
                         "per worker [640.0] MiB",
                         "    face_cnn local_vectorised: 0.4 s per warm round",
                         "    face_cnn vectorised (one process): 0.3 s per warm round"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without CUDA")
def test_the_script_stops_in_one_line_on_a_machine_without_cuda(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(SCRIPT), "1"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PY": sys.executable, "OUT": str(out)})
    assert done.returncode == gpu_report.NO_CUDA_EXIT
    said = (done.stdout + done.stderr).strip().splitlines()
    assert len(said) == 1 and said[0].startswith("gpu_check: no CUDA device: torch "), said
    assert not out.exists()  # nothing sampled, nothing run


def _script_simulations() -> list[tuple[str, dict[str, str]]]:
    """Each ``simulate NAME CONFIG --set ...`` step of the script, with the overrides its helper adds."""
    text = SCRIPT.read_text()
    common = re.search(r'^simulate\(\).*?\n(.*?)\n\}', text, re.S | re.M).group(1)
    common_sets = dict(kv.split("=", 1) for kv in re.findall(r"--set ([\w-]+=\S+)", common))
    steps = []
    for line in re.findall(r"^simulate (\S+ \S+.*?)(?:\s+#.*)?$", text, re.M):
        name, config, *rest = shlex.split(line)
        sets = {**common_sets, **dict(v.split("=", 1) for k, v in zip(rest, rest[1:]) if k == "--set")}
        steps.append((config, sets))
    return steps


def test_every_simulate_step_of_the_script_is_a_valid_gpu_run_and_face50s_run_vectorised_too():
    from shared_models.settings.simulation import VECTORISABLE_MODELS
    from simulations.run_config import load_run_config, parse_overrides

    steps = _script_simulations()
    assert [c for c, _ in steps] == ["face50", "face50", "face50_dp", "face50_dp"]
    vectorised = []
    for config, sets in steps:
        sets = {**sets, "num-server-rounds": "3", "runs-dir": "/tmp/x", "run-name": "check"}  # the script's $VARs
        overrides = parse_overrides([f"{k}={v}" for k, v in sets.items() if "$" not in v])  # as the CLI reads --set
        _, settings = load_run_config(REPO / "configs" / f"{config}.toml", overrides)  # raises ConfigError if not
        assert settings.device == "cuda"
        if settings.vectorised_clients:
            vectorised.append(settings.model)
    assert vectorised == ["face_cnn", "face_scatter_lcn_blur"] and set(vectorised) <= set(VECTORISABLE_MODELS)


def test_the_run_sampler_survives_fields_nvidia_smi_cannot_fill(tmp_path, monkeypatch):
    """A MIG slice answers ``[N/A]`` for utilisation: the old sampler's thread died on it (a traceback, no figures)."""
    script = tmp_path / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '[N/A], 1024'\necho '37, 2048'\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    with GpuSampler(interval_s=0.05) as sampler:
        time.sleep(0.4)
    assert died == []
    figures = sampler.figures()
    assert figures["gpu_util_mean_pct"] == 37.0 and figures["gpu_memory_used_max_mib"] == 2048.0
    assert busiest_gpu("[N/A], 10\n[Not Supported], 20\n") is None
    assert busiest_gpu("5, 100\n80, 50\n") == (80.0, 50.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the branch for a machine without CUDA")
def test_a_cpu_worker_reports_no_cuda_memory():
    """The worker's CUDA peak where torch is loaded but there is no CUDA (the CUDA branch itself needs a GPU)."""
    from simulations.engine.local_backend import _cuda_peak_mib

    assert "torch" in sys.modules and _cuda_peak_mib() == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the branch for a machine without CUDA")
def test_a_nodes_device_is_the_cpu_under_auto_and_cuda_without_a_gpu_is_refused_in_one_line():
    """The nodes' device placement (client/local_training.py resolve_device) on a machine without CUDA."""
    from client.local_training import resolve_device

    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"^device 'cuda:0' requested but CUDA is not available on this machine$"):
        resolve_device("cuda:0")


@pytest.mark.slow  # two CLI processes
@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal on a machine without CUDA")
def test_a_local_simulation_on_cuda_without_a_gpu_is_refused_at_start_in_one_line(tmp_path):
    """It used to start, synthesise the data, and fail every node's first message (their tracebacks in the log)."""
    config = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "cuda",
              "synth-samples": 300, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 1}
    for device in ("cuda", "cuda:1"):
        done = subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", str(REPO / "configs" / "quickstart.toml"),
                               *[f"--set={k}={v}" for k, v in {**config, "device": device}.items()]],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        said = (done.stdout + done.stderr).strip().splitlines()
        assert done.returncode != 0 and len(said) == 1, said
        assert f"run-config device = '{device}': CUDA is not available on this machine" in said[0]
        assert not (tmp_path / "fer").exists() and not (tmp_path / "runs" / "cuda").exists()
    from simulations.engine.gpu_usage import check_cuda_here

    check_cuda_here("cuda", "ray")  # a Ray cluster's nodes may have the GPUs this machine lacks
    check_cuda_here("cpu", "local")


def test_vectorised_groups_never_mix_nodes_training_on_different_devices():
    """A worker's group splits by device (client_groups._group_key): one batched step runs on one device."""
    from client.client_app import LocalTraining
    from shared_models.models.registry import build_model
    from simulations.engine.client_groups import _group_key
    from simulations.run_config import load_run_config

    _, settings = load_run_config(REPO / "configs" / "quickstart.toml", {"vectorised-clients": True})

    def training(device: str) -> LocalTraining:
        model = build_model(settings.model)
        return LocalTraining(settings, model, loader=[], optimizer=torch.optim.Adam(model.parameters()), n_inputs=1,
                             device=torch.device(device))  # a CUDA device object needs no GPU

    assert _group_key(training("cpu")) == _group_key(training("cpu"))
    assert _group_key(training("cpu")) != _group_key(training("cuda:0")) != _group_key(training("cuda:1"))


def test_on_a_gpu_the_engine_benchmarks_ray_actors_get_a_share_of_it():
    """With client-num-gpus = 0 Ray hides the GPU from its actors: the benchmark's Ray rows on a GPU machine were
    CPU figures. Each setup's settings must still be valid as a run's settings (ray's on a GPU share)."""
    from simulations.benchmarks.simulation_engine import FLOWER_RUNS, flower_run
    from simulations.run_config import load_run_config

    for backend in FLOWER_RUNS:
        for cuda in (False, True):
            sets = flower_run(backend, cuda)
            _, settings = load_run_config(REPO / "configs" / "face50.toml", sets)
            assert settings.client_num_gpus == (0.25 if cuda and backend == "ray" else 0.0), (backend, cuda)
