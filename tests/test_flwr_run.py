"""`flwr run .` (Flower's own CLI and managed local SuperLink) runs the same apps and config.

pyproject names the coordinator itself (server/server_app.py) as the ServerApp: a deployed `flwr run`
loads no research code, and prepares no data (an empty data-dir stops it with the command that writes one).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_apps_are_the_product_and_load_no_research_code():
    """The apps `flwr run` loads are the coordinator and the node; importing them imports nothing of simulations/."""
    from flwr.common.config import get_project_config

    components = get_project_config(REPO)["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "server.server_app:app", "clientapp": "client.client_app:app"}
    probe = ("import sys, importlib\n"
             + "".join(f"importlib.import_module({ref.partition(':')[0]!r})\n" for ref in components.values())
             + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulations'))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_an_empty_data_dir_stops_the_coordinator_with_the_command_that_fills_it(tmp_path):
    """What `flwr run` shows for a missing dataset: one line whose `fedemo data synth` command makes it ready."""
    from server.server_app import dataset_folder
    from simulations.cli import main
    from simulations.run_config import load_run_config

    folder = tmp_path / "no data yet"
    _, settings = load_run_config(None, {"data-dir": str(folder), "synth-samples": 120, "runs-dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError) as err:
        dataset_folder(settings)
    line = str(err.value)
    assert "\n" not in line and not folder.exists()
    command = shlex.split(re.search(r"`(fedemo data synth [^`]+)`", line).group(1))
    assert main(command[1:]) == 0
    assert dataset_folder(settings) == folder.resolve()


def _stop_local_superlink(flwr_home: Path) -> None:
    """The managed SuperLink outlives `flwr run`; stop the one this test started (its database is in our FLWR_HOME)."""
    subprocess.run(["pkill", "-f", str(flwr_home)], check=False)


@pytest.mark.slow
def test_flwr_run_from_the_repo_root(tmp_path):
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    assert flwr, "the flwr CLI is installed with flwr[simulation]"
    flwr_home = tmp_path / "flwr-home"
    # As in an activated venv: `flwr` starts `flower-superlink` from PATH.
    # FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION: without it the managed SuperLink `uv sync`s
    # the app's dependencies into a fresh 6 GB environment on every new FLWR_HOME (see README).
    # RAY_ADDRESS=local: Flower's simulation starts a Ray of its own, never joins (or hangs on) a cluster that a
    # `ray start` on this machine left in /tmp/ray/ray_current_cluster.
    # FEDEMO_STARTED=1000: a start time that a shell exported, or that an earlier in-process simulation left; the
    # coordinator must ignore it (it once hid the one-line reason below: Flower showed only its exit code 700).
    env = {**os.environ, "FEDEMO_STARTED": "1000", "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_ADDRESS": "local", "PATH": f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_config = (f'data-dir="{tmp_path / "data"}" runs-dir="{tmp_path / "runs"}" run-name="flwr-run" '
                  "synth-samples=300 num-server-rounds=1")
    command = [flwr, "run", ".", "--stream", "--run-config", run_config, "--federation-config", "num-supernodes=2"]
    try:
        # No data yet: the coordinator stops at once, with one line naming the command that writes it.
        empty = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        told = empty.stdout + empty.stderr
        pattern = r"data-dir \S+ is missing or empty: .*`(fedemo data synth [^`]+)`.*"
        started = re.search(r"Successfully started run (\d+)", told)
        if not re.search(pattern, told) and started:  # --stream attaches after a run this short may have ended
            told += subprocess.run([flwr, "log", started.group(1), "--show"], cwd=REPO, env=env, capture_output=True,
                                   text=True, timeout=120).stdout
        said = re.search(pattern, told)
        assert said, told[-3000:]
        assert not (tmp_path / "data").exists()  # nothing was synthesised by the coordinator
        synth = shlex.split(said.group(1))
        fedemo = str(Path(sys.executable).parent / "fedemo")
        subprocess.run([fedemo, *synth[1:]], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        _stop_local_superlink(flwr_home)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    run_dir = tmp_path / "runs" / "flwr-run"
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1], output[-3000:]  # `flwr run --stream` exits 0 on a failed run
    assert len(rounds[-1]["evaluate"]["clients"]) == 2
    assert (run_dir / "global_model.pt").is_file()
    assert "[fedemo] round 1/1" in output  # per-round progress is streamed
