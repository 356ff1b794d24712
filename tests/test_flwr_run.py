"""`flwr run .` (Flower's own CLI and managed local SuperLink) runs the same apps and config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _stop_local_superlink(flwr_home: Path) -> None:
    """The managed SuperLink outlives `flwr run`; stop the one this test started (its database is in our FLWR_HOME)."""
    subprocess.run(["pkill", "-f", str(flwr_home)], check=False)


def test_flwr_run_from_the_repo_root(tmp_path):
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    assert flwr, "the flwr CLI is installed with flwr[simulation]"
    flwr_home = tmp_path / "flwr-home"
    # As in an activated venv: `flwr` starts `flower-superlink` from PATH.
    # FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION: without it the managed SuperLink `uv sync`s
    # the app's dependencies into a fresh 6 GB environment on every new FLWR_HOME (see README).
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run_config = (f'data-dir="{tmp_path / "data"}" runs-dir="{tmp_path / "runs"}" run-name="flwr-run" '
                  "synth-samples=300 num-server-rounds=1")
    try:
        proc = subprocess.run(
            [flwr, "run", ".", "--stream", "--run-config", run_config, "--federation-config", "num-supernodes=2"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        _stop_local_superlink(flwr_home)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    run_dir = tmp_path / "runs" / "flwr-run"
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert len(rounds[-1]["evaluate"]["clients"]) == 2
    assert (run_dir / "global_model.pt").is_file()
    assert "[fedemo] round 1/1" in output  # per-round progress is streamed
