"""What `fedemo simulate` prints and keeps: our lines and a progress line per round, Flower's own lines only
with --verbose, a plain run.log, one wall-clock figure and a final summary (server/rounds/console.py).

The two runs are real (the quickstart config, 2 rounds, 300 synthetic faces) and their output is captured
through pipes, as in CI: no control codes may reach it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ESC = "\x1b"
# Lines only Flower's own code logs at INFO (its strategies' sampling notes); hidden unless verbose.
FLOWER_LINES = ("configure_train: Sampled", "aggregate_evaluate: Received")
DURATION = re.compile(r"(?<![\w:.])(\d+(?:\.\d+)?) ?s\b")  # "69.6 s"; the round lines' "elapsed 0:26" are clocks


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """The dataset, written before the runs: its own "written in N s" line stays out of their output."""
    from simulations.synthetic.synthetic_data import synthesize

    return synthesize("fer2013", tmp_path_factory.mktemp("data") / "fer2013", 300, 0)


def simulate(tmp: Path, faces: Path, name: str, *extra: str) -> tuple[str, Path]:
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", str(REPO / "configs" / "quickstart.toml"),
           "--set", "num-server-rounds=2", "--set", f"data-dir={faces}", "--set", f"runs-dir={tmp / 'runs'}",
           "--set", f"run-name={name}", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("FEDEMO_VERBOSE", "FEDEMO_STARTED")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output, tmp / "runs" / name


@pytest.mark.slow
def test_quiet_console_plain_run_log_one_duration_and_a_final_summary(tmp_path, faces):
    output, run_dir = simulate(tmp_path, faces, "quiet")

    assert ESC not in output  # a pipe is not a terminal: plain lines, no bar, no colours
    for line in FLOWER_LINES:
        assert line not in output
    assert "Final results" not in output and "Manually terminating" not in output
    rounds = [line for line in output.splitlines() if line.startswith("[fedemo] round ")]
    assert [r.split()[2] for r in rounds] == ["0/2", "1/2", "2/2"]
    assert all("elapsed " in r for r in rounds) and all("ETA " in r for r in rounds[1:])

    summary_line = next(line for line in output.splitlines() if line.startswith("FedEmo run quiet: 2 of 2 rounds"))
    assert str(run_dir / "report.html") in summary_line
    assert re.search(r"accuracy \d\.\d{3} \(initial \d\.\d{3}\) vs majority-class rate \d\.\d{3}", summary_line)
    majority = float(re.search(r"majority-class rate (\d\.\d+)", summary_line).group(1))
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    true_class_totals = [sum(row) for row in last["confusion"]["counts"]]
    assert majority == pytest.approx(max(true_class_totals) / sum(true_class_totals), abs=5e-4)

    # one wall-clock figure, however many lines mention it: the one summary.json keeps
    wall_clock = json.loads((run_dir / "summary.json").read_text())["wall_clock_s"]
    assert {float(d) for d in DURATION.findall(output)} == {wall_clock}

    log = (run_dir / "run.log").read_text(encoding="utf-8")
    assert ESC not in log
    assert "FedEmo run quiet: task=face" in log  # logged before the run folder existed, kept for it
    assert "[fedemo] round 2/2" in log and summary_line in log
    for line in FLOWER_LINES:
        assert line not in log


@pytest.mark.slow
def test_verbose_shows_flowers_own_lines(tmp_path, faces):
    output, run_dir = simulate(tmp_path, faces, "verbose", "--verbose")

    assert ESC not in output
    for line in FLOWER_LINES:
        assert line in output
    assert "[fedemo] round 2/2" in output
    assert "configure_train: Sampled" in (run_dir / "run.log").read_text(encoding="utf-8")


def test_flowers_banner_and_final_results_dump_show_only_when_verbose(monkeypatch):
    """Flower's own Strategy.start loop (banner, "Final results" dump) through the console, both ways."""
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.logger import console_handler
    from flwr.supercore.task_identity import TaskIdentity

    from server.rounds import console

    for attr in ("_run_id", "_task_id", "_node_id"):  # what a ServerApp process has before building messages
        if hasattr(TaskIdentity, attr):
            monkeypatch.setattr(TaskIdentity, attr, 1)

    class NoReplies:  # a Grid with two nodes that never answer: Strategy.start runs its round and its dump
        def get_node_ids(self):
            return [1, 2]

        def send_and_receive(self, messages, timeout=None):
            list(messages)
            return []

    console.begin()
    for verbose in (False, True):
        monkeypatch.setenv(console.VERBOSE_ENV, "1" if verbose else "0")
        out = io.StringIO()
        monkeypatch.setattr(console_handler, "stream", out)
        from flwr.common.logger import log

        log(logging.INFO, "ours")
        FedAvg(min_available_nodes=2).start(grid=NoReplies(), initial_arrays=ArrayRecord(), num_rounds=1)
        text = out.getvalue()
        assert "ours" in text
        assert ("Starting FedAvg strategy" in text) is verbose
        assert ("Final results" in text) is verbose


QUIET_SCRIPT = """
import logging, warnings
from shared_models import quiet_warnings
quiet_warnings.install()
warnings.warn("Secure RNG turned off. This is perfectly fine for experimentation")
warnings.warn("Full backward hook is firing when gradients are computed with respect to module outputs")
warnings.warn("another warning still shows")
from opacus.accountants import create_accountant
for name in ("prv", "rdp"):  # the PRV accountant's internal RDP bound warns; only the RDP accountant's shows
    accountant = create_accountant(name)
    accountant.history = [(5.0, 0.01, 10)]
    accountant.get_epsilon(1e-5)
    print("accountant", name, flush=True)
flwr = logging.getLogger("flwr")
flwr.addHandler(logging.StreamHandler())
flwr.warning("Manually terminating %s", "ClientAppActor")
flwr.warning("Node %s failed", 3)
"""


def test_known_harmless_warnings_are_silenced_at_their_source():
    proc = subprocess.run([sys.executable, "-W", "default", "-c", QUIET_SCRIPT], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "Secure RNG" not in err and "Full backward hook" not in err and "Manually terminating" not in err
    assert "another warning still shows" in err and "Node 3 failed" in err
    assert err.count("Optimal order is the") == 1  # the RDP accountant's, not the PRV one's


def test_flwr_run_says_what_the_federation_config_sets(monkeypatch):
    """Under `flwr run` the node count and resources come from Flower's federation config: said at start."""
    from flwr.supercore.logger import console_handler

    from server.rounds import console
    from shared_models.settings.run_settings import RunSettings
    from server.server_app import say_federation
    from simulations.run_config import load_run_config

    console.begin()
    out = io.StringIO()
    monkeypatch.setattr(console_handler, "stream", out)
    settings = RunSettings.from_config(load_run_config(REPO / "configs" / "quickstart.toml")[0])
    say_federation(settings, 2)
    text = out.getvalue()
    assert text.startswith("WARNING: flwr run: 2 simulated nodes")
    assert "num-supernodes = 4" in text and '--federation-config "num-supernodes=4 client-resources-num-cpus=1' in text
    out.truncate(0)
    out.seek(0)
    say_federation(settings, 4)
    assert out.getvalue().startswith("flwr run: 4 simulated nodes")


def worst_case_round(server_round: int) -> tuple[dict, dict]:
    """A round with every optional figure: DP-SGD, noised counts, client-level DP, valence/arousal, 50 clients
    trained, rejections and failures, a model left unchanged."""
    clients = [{"client": str(i), "num_examples": 40, "dp": {"epsilon": 7.654321 + i / 100}} for i in range(50)]
    train = {"clients": clients, "failures": [{"node_id": 9, "reason": "timeout"}],
             "rejected": [{"client": "3", "reason": "norm"}, {"client": "12", "reason": "norm"}], "aggregated": False}
    evaluation = {"loss": 12.345678, "accuracy": 0.7123, "macro_f1": 0.6543, "uar": 0.6499, "eval_examples": 123456,
                  "ccc_valence": 0.41, "ccc_arousal": 0.38, "central_dp": {"epsilon": 3.21},
                  "groups_dp": {"epsilon_by_client": {str(i): 1.25 for i in range(50)}},
                  "evaluate": {"clients": [{"client": str(i)} for i in range(50)],
                               "failures": [{"node_id": 7, "reason": "timeout"}]}}
    return train, evaluation


def test_round_lines_fit_100_columns_and_run_log_keeps_every_figure(tmp_path, monkeypatch):
    """The console's round line (with its progress bar) fits 100 columns; run.log has the full figures too."""
    from flwr.supercore.logger import console_handler

    from server.rounds import console
    from server.record.round_recorder import RoundRecorder
    from server.record.run_record import RunRecord

    console.begin()
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    out = io.StringIO()
    monkeypatch.setattr(console_handler, "stream", out)
    record = RunRecord.create(tmp_path, "wide", {}, {})
    console.attach_run_log(record.run_dir)
    recorder = RoundRecorder(record, num_rounds=1000)
    for server_round in (0, 999):
        train, evaluation = worst_case_round(server_round)
        if server_round:
            recorder.train_entry(server_round, train)
        recorder.log(server_round, evaluation)
    console.end_run_log()

    lines = [line for line in out.getvalue().splitlines() if line.startswith("[fedemo] round ")]
    assert len(lines) == 2 and "details" not in out.getvalue()
    for line in lines:
        assert console.BAR_WIDTH + 1 + len(line) <= 100, line  # with the progress bar drawn on a terminal
    last = lines[-1]
    assert last.startswith("[fedemo] round 999/1000  acc 0.712~  F1 0.654  loss 12.35  eps 8.14")  # largest
    assert "elapsed " in last
    log = (record.run_dir / "run.log").read_text(encoding="utf-8")
    assert "[fedemo] round 999/1000  acc 0.712~" in log
    details = next(line for line in log.splitlines() if "details of round 999/1000" in line)
    for figure in ("UAR 0.650", "ccc-v 0.410", "max client epsilon 8.144", "max evaluation-count epsilon 1.250",
                   "client-level epsilon 3.210", "rejected: client 3, client 12", "(model unchanged)",
                   "50 clients trained, 2 rejected, 50 evaluated on 123456 samples (a noised, unclipped count), "
                   "2 failures"):
        assert figure in details

    monkeypatch.setenv(console.VERBOSE_ENV, "1")  # --verbose: the details reach the console too
    out.truncate(0)
    out.seek(0)
    recorder.log(1000, worst_case_round(1000)[1])
    assert "details of round 1000/1000" in out.getvalue()


def test_a_start_time_older_than_the_process_is_not_this_runs(monkeypatch):
    """FEDEMO_STARTED inherited from a shell or an earlier simulation: neither the wall clock nor who reports."""
    from server.rounds import console

    monkeypatch.setenv(console.STARTED_ENV, "1000")
    assert not console.started_by_fedemo()
    assert console.run_started() == console.process_started()
    console.mark_start()
    assert console.started_by_fedemo()
    assert console.run_started() >= console.process_started()
