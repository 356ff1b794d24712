"""A coordinator that is killed or interrupted, as real processes, and a data folder that holds no dataset.

The kill test SIGKILLs a real ``fedemo simulate`` process (its whole process
group: the coordinator and its Ray workers) in the middle of round 2 and
resumes the run from its checkpoint; the result must be the uninterrupted
run's weights. FedAvgM (server momentum) is on, so the optimiser state in
the checkpoint matters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from server.checkpoint import Checkpoint, CheckpointError
from simulations.cli import main as fedemo
from simulations.simulate import run_simulation

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.toml"


def overrides(tmp_path: Path, name: str) -> dict:
    return {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
            "synth-samples": 600, "num-server-rounds": 3, "local-epochs": 1, "server-momentum": 0.9}


def start_cli(tmp_path: Path, name: str) -> subprocess.Popen:
    """``fedemo simulate`` as its own process group, as a user's terminal would start it."""
    fedemo_bin = shutil.which("fedemo", path=str(Path(sys.executable).parent))
    args = [fedemo_bin, "simulate", str(QUICKSTART)]
    for key, value in overrides(tmp_path, name).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return subprocess.Popen(args, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_round(run_dir: Path, server_round: int, proc: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            if Checkpoint.load(run_dir).server_round >= server_round:
                return
        except CheckpointError:
            pass
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    raise TimeoutError(f"round {server_round} never completed in {run_dir}")


def rounds_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_coordinator_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path):
    whole = run_simulation(QUICKSTART, overrides(tmp_path, "whole"))

    proc = start_cli(tmp_path, "killed")
    killed = tmp_path / "runs" / "killed"
    wait_for_round(killed, 1, proc)
    time.sleep(0.3)  # inside round 2 (on a loaded machine round 2 may already be done: then it resumes from 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert Checkpoint.load(killed).server_round in (1, 2) and not (killed / "summary.json").exists()

    assert run_simulation(None, None, resume=killed) == killed
    assert rounds_of(killed) == [0, 1, 2, 3]  # round 2 once, although its line may have been written twice
    got, want = torch.load(killed / "global_model.pt"), torch.load(whole / "global_model.pt")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["rounds"] == 3 and "interrupted" not in summary


@pytest.mark.slow
def test_the_first_sigint_stops_the_run_within_seconds_and_says_how_to_resume(tmp_path):
    proc = start_cli(tmp_path, "stopped")
    run_dir = tmp_path / "runs" / "stopped"
    wait_for_round(run_dir, 1, proc)
    started = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group, Ray's workers included
    output, _ = proc.communicate(timeout=60)
    stopped_in = time.time() - started
    assert proc.returncode == 130, output[-3000:]
    assert stopped_in < 20, stopped_in
    assert f"fedemo simulate --resume {run_dir}" in output and "Traceback" not in output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"]["rounds_done"] == summary["rounds"] >= 1
    assert summary["interrupted"]["planned_rounds"] == 3
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run"]["interrupted"]["rounds_done"] == summary["rounds"]
    assert "incomplete" in (run_dir / "report.html").read_text().lower()


def test_a_folder_without_a_dataset_stops_before_the_engine_with_one_line(tmp_path, capsys):
    data = tmp_path / "fer"
    data.mkdir()
    (data / "notes.txt").write_text("the export failed\n")
    started = time.time()
    code = fedemo(["simulate", str(QUICKSTART), "--set", f'data-dir="{data}"',
                   "--set", f'runs-dir="{tmp_path / "runs"}"'])
    err = capsys.readouterr().err
    assert code == 2 and time.time() - started < 30
    assert len(err.strip().splitlines()) == 1 and str(data) in err and "fer2013" in err, err
    assert not (tmp_path / "runs").exists()  # no engine, no run folder


def test_a_simulation_that_would_wait_forever_for_nodes_is_refused(tmp_path, capsys):
    code = fedemo(["simulate", "--set", "num-supernodes=2", "--set", "min-available-nodes=3",
                   "--set", f'runs-dir="{tmp_path / "runs"}"'])
    assert code == 2 and "min-available-nodes = 3" in capsys.readouterr().err


def test_resume_refuses_a_folder_it_cannot_continue_by_name(tmp_path, capsys):
    assert fedemo(["simulate", "--resume", str(tmp_path)]) == 2
    assert "not a FedEmo run folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"run_config": {}}))
    assert fedemo(["simulate", "--resume", str(tmp_path)]) == 2
    assert "never completed a round" in capsys.readouterr().err
