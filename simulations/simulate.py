"""Run a FedEmo simulation on Flower's own simulation engine (its virtual-client engine).

What ``flwr run .`` does inside its managed SuperLink, without the daemon: the same ServerApp and ClientApp
on the backend ``simulation-backend`` names (``local`` worker processes, or ``ray``, also across a Ray
cluster). The data is made ready and checked before the engine starts; the first Ctrl-C stops the run
cleanly and ``fedemo simulate --resume RUN_DIR`` continues it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from server.rounds import interruption
from server.record.checkpoint import Checkpoint, check_checkpoint_fits
from server.record.run_lock import check_run_folder_free
from server.record.run_record import finite_json, run_is_finished
from shared_models.atomic_files import atomic_write_json
from shared_models.settings.run_settings import ConfigError, RunSettings, check_resume_changes, resume_changes
from simulations.synthetic.data_prep import prepare_data
from simulations.engine.gpu_usage import GpuSampler, check_cuda_here
from simulations.run_config import load_run_config, prepare_run, project_dir


COORDINATOR_APP = "server.server_app:app"


def backend_config(settings: RunSettings) -> dict[str, Any]:
    """Ray resources: each virtual client reserves these CPUs/GPU share."""
    resources: dict[str, Any] = {"num_cpus": settings.client_num_cpus, "num_gpus": settings.client_num_gpus}
    init_args: dict[str, Any] = {"logging_level": "error", "log_to_driver": True}
    if settings.ray_address:  # an existing cluster; without it ray.init() itself honours $RAY_ADDRESS
        init_args["address"] = settings.ray_address
    return {"client_resources": resources, "init_args": init_args}


def client_app_reference(app_dir: str | Path) -> str:
    """pyproject's ClientApp reference (``[tool.flwr.app.components] clientapp``)."""
    from flwr.common.config import get_project_config

    return get_project_config(Path(app_dir))["tool"]["flwr"]["app"]["components"]["clientapp"]


def uses_gpu(settings: RunSettings) -> bool:
    """Whether the nodes will train on CUDA (``device`` = cuda, or auto with a GPU present)."""
    if settings.device.startswith("cuda"):
        return True
    if settings.device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def local_workers(settings: RunSettings) -> int:
    """Worker processes of the local backend: one per ``client-num-cpus`` cores, or one on a GPU.

    One worker on a GPU means one CUDA context for all virtual nodes; their
    kernels queue on the same device instead of 50 contexts competing for it.
    """
    if settings.simulation_workers:
        return settings.simulation_workers
    if uses_gpu(settings):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(settings.num_supernodes, int(cores // settings.client_num_cpus)))


def local_backend_config(settings: RunSettings, client_reference: str, app_dir: str) -> dict[str, Any]:
    """The local backend's section of Flower's backend config (simulations/engine/local_backend.py)."""
    # As Ray does for its actors: each worker's OpenMP/BLAS pools sized to its share of the cores, unless set.
    threads = {name: str(settings.client_threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                "OPENBLAS_NUM_THREADS") if name not in os.environ}
    return {"local": {"client_app": client_reference, "app_dir": app_dir, "workers": local_workers(settings),
                      "environment": threads, "vectorised": settings.vectorised_clients}}


def engine_summary(settings: RunSettings, backend: Any) -> dict[str, Any]:
    """Which backend ran the nodes, with how many workers, and the memory they peaked at."""
    from simulations.engine.local_backend import peak_rss_mib, pss_mib

    coordinator = peak_rss_mib()
    if backend is None:  # Ray: its actors' memory is Ray's to report
        return {"backend": "ray", "peak_rss_mib": {"coordinator": round(coordinator, 1)}}

    workers = [round(p.rss_mib, 1) for p in backend.stats.peaks]
    shared = [round(p.pss_mib, 1) for p in backend.stats.peaks]
    own_pss = pss_mib()
    engine = {"backend": "local", "workers": backend.workers, "workers_replaced": backend.stats.workers_replaced,
              "messages": backend.stats.messages,
              **({"vectorised_groups": backend.stats.groups} if backend.vectorised else {}),
              "peak_rss_mib": {"coordinator": round(coordinator, 1), "workers": workers,
                               "total": round(coordinator + sum(workers), 1)},
              "final_pss_mib": {"coordinator": round(own_pss, 1), "workers": shared,
                                "total": round(own_pss + sum(shared), 1)}}
    cuda = [round(p.cuda_mib, 1) for p in backend.stats.peaks if p.cuda_mib]
    if cuda:
        engine["peak_cuda_mib"] = cuda
    return engine


def gpu_line(engine: dict[str, Any]) -> str:
    """One console line on how the run used the GPU (summary.json's ``engine``)."""
    gpu = engine.get("gpu", {})
    parts = []
    if gpu:
        parts.append(f"utilisation {gpu['gpu_util_mean_pct']:.0f}% on average ({gpu['gpu_util_max_pct']:.0f}% at most), "
                     f"{gpu['gpu_memory_used_max_mib']:.0f} MiB used at most")
    if engine.get("peak_cuda_mib"):
        parts.append(f"torch's peak per worker {', '.join(f'{m:.0f}' for m in engine['peak_cuda_mib'])} MiB")
    return "GPU: " + "; ".join(parts) + f" ({engine.get('workers', '?')} worker(s), one CUDA context each)"


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], RunSettings]:
    """The run config of the run in ``run_dir``, set to continue it from its checkpoint."""
    run_dir = Path(run_dir).expanduser().resolve()
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a FedEmo run folder (no config.json)")
    check_run_folder_free(run_dir)  # a second resume of a running run: one line, before any engine starts
    checkpoint = Checkpoint.load(run_dir)  # refuses a folder with no completed round, by name
    saved = json.loads(config_file.read_text())["run_config"]
    # Before validation, so the refusal names the key whatever its new value (the coordinator checks again).
    check_resume_changes(resume_changes(saved, dict(overrides or {})), run_dir)
    config, _ = load_run_config(None, {**saved, **dict(overrides or {}), "resume": str(run_dir),
                                       "runs-dir": str(run_dir.parent), "run-name": run_dir.name})
    settings = RunSettings.from_config(config)
    if checkpoint.server_round > settings.num_server_rounds:
        raise ConfigError(f"{run_dir} already trained {checkpoint.server_round} rounds: num-server-rounds = "
                          f"{settings.num_server_rounds} cannot end it earlier")
    # A run killed after its last checkpoint but before its summary and signed report is finished by the
    # resume (no round is trained); one that ended properly is done.
    if checkpoint.server_round == settings.num_server_rounds and run_is_finished(run_dir, checkpoint.server_round):
        raise FileExistsError(f"{run_dir} already completed its {settings.num_server_rounds} rounds; "
                              "raise num-server-rounds (--set) to train on")
    from shared_models.models.registry import build_model  # torch: only once the folder is worth continuing

    check_checkpoint_fits(checkpoint, build_model(settings.model, valence_arousal=settings.valence_arousal)
                          .state_dict(), run_dir)  # another model's weights: one line, before any engine
    from server.privacy.central_dp import check_resumable  # client-level DP continues only in the mode it started in

    check_resumable(settings.central_dp, checkpoint.central, run_dir)
    return config, settings


def run_simulation(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                   resume: str | Path | None = None, client_app: str | None = None) -> Path:
    """Run one simulation; returns the run folder it wrote.

    ``resume``: a run folder to continue from its last completed round
    (its own config, with ``overrides``). ``client_app``: a ClientApp
    reference other than pyproject's (the tests put faulty nodes in a
    federation this way).
    """
    from server.rounds import console

    from simulations.engine.local_backend import reset_peak_rss

    console.mark_start()  # the run's one wall-clock figure (the coordinator's wall_clock_s) counts from here
    peak_from_start = reset_peak_rss()  # the coordinator's peak counts from here, not memory the process freed before
    console.begin()  # before the first line: no doubled lines, Flower's own lines only with --verbose, run.log
    if resume is not None:
        config, settings = resume_config(resume, overrides)
    else:
        config, settings = prepare_run(config_file, overrides, label=str(os.getpid()))
    check_cuda_here(settings.device, settings.simulation_backend)  # before any data or engine: one line
    if settings.central_dp != "off":  # a plan over the client-level budget stops here, before any work
        from server.privacy.central_dp import check_central_budget

        check_central_budget(settings, population=settings.num_supernodes)
    data_dir = prepare_data(settings)  # synthesised and checked before any engine starts
    if data_dir is not None:
        config["data-dir"] = str(data_dir)
    os.environ.setdefault("FLWR_HOME", str(Path(settings.runs_dir) / ".flwr"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    from simulations.engine import flower_seam

    run, server_context = flower_seam.new_run(config)
    # Load the apps by reference from the app folder, as `flwr run` does: every
    # virtual node then gets the same fused run config from pyproject + overrides.
    app_dir = str(project_dir())
    client_reference = client_app or client_app_reference(app_dir)
    interruption.reset()
    backend = None
    # A second Ctrl-C stops the nodes at once (the local backend's workers; under Ray it quits at once).
    previous = interruption.install_handlers(stop_nodes=lambda: backend is not None and backend.stop_now())
    gpu = GpuSampler() if uses_gpu(settings) and GpuSampler.available() else None
    try:
        if gpu:
            gpu.__enter__()
        if settings.simulation_backend == "ray":
            flower_seam.run_on_ray(run=run, server_context=server_context, server_app=COORDINATOR_APP,
                                     client_app=client_reference, num_supernodes=settings.num_supernodes,
                                     app_dir=app_dir, backend_config=backend_config(settings))
        else:
            from simulations.engine.local_backend import LocalBackend

            backend = LocalBackend(local_backend_config(settings, client_reference, app_dir))
            flower_seam.run_on_backend(backend, run=run, server_context=server_context, server_app=COORDINATOR_APP,
                                         num_supernodes=settings.num_supernodes, app_dir=app_dir,
                                         stop_server=interruption.request_stop)
    finally:
        if gpu:
            gpu.__exit__(None, None, None)
        interruption.restore_handlers(previous)
    run_dir = Path(settings.runs_dir) / settings.run_name
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"simulation ended without a summary in {run_dir}; see the log above for the error")
    summary = json.loads(summary_path.read_text())
    summary["num_supernodes"] = settings.num_supernodes
    summary["engine"] = engine_summary(settings, backend)
    summary["engine"]["coordinator_peak_since"] = "run start" if peak_from_start else "process start"
    if gpu and gpu.figures():
        summary["engine"]["gpu"] = gpu.figures()
    try:
        atomic_write_json(summary_path, finite_json(summary))
    except OSError as err:  # a full disk now: the coordinator's summary stays, without the engine's figures
        if not interruption.disk_full(err):
            raise
        print(f"[fedemo] could not add the engine's figures to {summary_path}: {err.strerror}")
    if "gpu" in summary["engine"] or "peak_cuda_mib" in summary["engine"]:
        print(gpu_line(summary["engine"]))
    return run_dir
