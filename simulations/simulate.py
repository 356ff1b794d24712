"""Run a FedEmo simulation on Flower's own simulation engine (Ray virtual client engine).

This is what ``flwr run .`` does inside its managed SuperLink, minus the
background daemon and the app packaging: the same ServerApp and ClientApp,
the same fused run config, Flower's VCE with per-client resources. Running it
in-process keeps a researcher's run self-contained and its output in one
terminal and one run folder.

Before the engine starts, the data is made ready and checked
(simulations/data_prep.py). While it runs, the first Ctrl-C (SIGINT or
SIGTERM) asks the coordinator to stop cleanly (server/interruption.py): the
run folder then says it was interrupted and how to resume
(``fedemo simulate --resume RUN_DIR``, which continues from the last
checkpointed round).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from server import interruption
from server.checkpoint import Checkpoint
from shared_models.run_settings import ConfigError, RunSettings
from simulations.data_prep import prepare_data
from simulations.run_config import load_run_config, prepare_run, project_dir


COORDINATOR_APP = "server.server_app:app"


def backend_config(settings: RunSettings) -> dict[str, Any]:
    """Ray resources: each virtual client reserves these CPUs/GPU share."""
    resources: dict[str, Any] = {"num_cpus": settings.client_num_cpus, "num_gpus": settings.client_num_gpus}
    return {"client_resources": resources, "init_args": {"logging_level": "error", "log_to_driver": True}}


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> tuple[dict[str, Any], RunSettings]:
    """The run config of the run in ``run_dir``, set to continue it from its checkpoint."""
    run_dir = Path(run_dir).expanduser().resolve()
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not a FedEmo run folder (no config.json)")
    done = Checkpoint.load(run_dir).server_round  # refuses a folder with no completed round, by name
    saved = json.loads(config_file.read_text())["run_config"]
    config, _ = load_run_config(None, {**saved, **dict(overrides or {}), "resume": str(run_dir),
                                       "runs-dir": str(run_dir.parent), "run-name": run_dir.name})
    settings = RunSettings.from_config(config)
    if done >= settings.num_server_rounds:
        raise FileExistsError(f"{run_dir} already completed its {settings.num_server_rounds} rounds; "
                              "raise num-server-rounds (--set) to train on")
    return config, settings


def run_simulation(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                   resume: str | Path | None = None, client_app: str | None = None) -> Path:
    """Run one simulation; returns the run folder it wrote.

    ``resume``: a run folder to continue from its last completed round
    (its own config, with ``overrides``). ``client_app``: a ClientApp
    reference other than pyproject's (the tests put faulty nodes in a
    federation this way).
    """
    if resume is not None:
        config, settings = resume_config(resume, overrides)
    else:
        config, settings = prepare_run(config_file, overrides, label=str(os.getpid()))
    if settings.min_available_nodes > settings.num_supernodes:  # Flower would wait for them forever
        raise ConfigError(f"run-config min-available-nodes = {settings.min_available_nodes}: more than the "
                          f"{settings.num_supernodes} simulated nodes (num-supernodes); the run would never start")
    if settings.central_dp != "off":  # a plan over the client-level budget stops here, before any work
        from server.central_dp import check_central_budget

        check_central_budget(settings, population=settings.num_supernodes)
    data_dir = prepare_data(settings)  # synthesised and checked before any engine starts
    if data_dir is not None:
        config["data-dir"] = str(data_dir)
    os.environ.setdefault("FLWR_HOME", str(Path(settings.runs_dir) / ".flwr"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Opacus installs a root log handler on import; without this every Flower line prints twice.
    logging.getLogger("flwr").propagate = False

    from flwr.app import Context, RecordDict
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from flwr.common.config import get_project_config

    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = config
    TaskIdentity.task_id = run.primary_task_id
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=config)

    # Load the apps by reference from the app folder, as `flwr run` does: every
    # virtual node then gets the same fused run config from pyproject + overrides.
    app_dir = project_dir()
    components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
    started = time.time()
    interruption.reset()
    previous = interruption.install_handlers()
    try:
        _run_simulation(
            num_supernodes=settings.num_supernodes,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app_attr=client_app or components["clientapp"],
            server_app_attr=COORDINATOR_APP,  # the data is ready: no need for flwr_app's preparation
            backend_name="ray",
            backend_config=backend_config(settings),
            server_app_context=server_context,
            app_dir=str(app_dir),
            is_app=True,
            run=run,
        )
    finally:
        interruption.restore_handlers(previous)
    run_dir = Path(settings.runs_dir) / settings.run_name
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"simulation ended without a summary in {run_dir}; see the log above for the error")
    summary = json.loads(summary_path.read_text())
    summary["wall_clock_s"] = round(time.time() - started, 2)
    summary["num_supernodes"] = settings.num_supernodes
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return run_dir
