"""A coordinator that is killed or interrupted, as real processes, and a data folder that holds no dataset.

The kill test SIGKILLs a real ``fedemo simulate`` process (its whole process
group: the coordinator and its simulated nodes) in the middle of round 2 and
resumes the run from its checkpoint; the result must be the uninterrupted
run's weights. FedAvgM (server momentum) is on, so the optimiser state in
the checkpoint matters.

The DP kill test SIGKILLs a sample-level DP run after a node has trained
(and spent) a round the coordinator never aggregated: every node's ledger
must keep that spend, record the round again when it is retrained after the
resume, and the report's ledger check must call those ledgers "ahead".
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

import dp_accounting
import pytest
import torch

from server.privacy.central_dp import RELEASES_FILE, epsilon_after
from server.record.checkpoint import Checkpoint, CheckpointError
from shared_models.config_error import ConfigError
from simulations.cli import main as fedemo
from simulations.simulate import resume_config, run_simulation

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.toml"
QUICKSTART_DP = REPO / "configs" / "quickstart_dp.toml"


def overrides(tmp_path: Path, name: str) -> dict:
    return {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
            "synth-samples": 600, "num-server-rounds": 3, "local-epochs": 1, "server-momentum": 0.9}


def dp_overrides(tmp_path: Path, name: str) -> dict:
    """quickstart_dp shrunk: 3 hospitals, 3 rounds, 600 synthetic faces, the PLD accountant."""
    return {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
            "synth-samples": 600, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 3,
            "batch-size": 32, "dp-accountant": "pld"}


def start_cli(tmp_path: Path, name: str, config: Path = QUICKSTART, settings: dict | None = None) -> subprocess.Popen:
    """``fedemo simulate`` as its own process group, as a user's terminal would start it."""
    fedemo_bin = shutil.which("fedemo", path=str(Path(sys.executable).parent))
    args = [fedemo_bin, "simulate", str(config)]
    for key, value in (settings or overrides(tmp_path, name)).items():
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


def checkpoint_round(run_dir: Path) -> int:
    try:
        return Checkpoint.load(run_dir).server_round
    except CheckpointError:
        return 0


def ledger_events(run_dir: Path) -> dict[str, list[dict]]:
    """Every node's recorded training events, straight from its ledger file (written atomically)."""
    events = {}
    for path in sorted((run_dir / "node-state").glob("client-*/privacy_ledger.json")):
        client = path.parent.name.removeprefix("client-")
        events[client] = [e for e in json.loads(path.read_text())["events"] if e.get("kind", "train") == "train"]
    return events


def kill_when_a_node_is_ahead(run_dir: Path, proc: subprocess.Popen, limit_s: float = 300) -> int:
    """SIGKILL the run once some node has recorded a round the checkpoint does not hold; returns that round."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        done = checkpoint_round(run_dir)
        ahead = [e["round"] for events in ledger_events(run_dir).values() for e in events if e["round"] > done >= 1]
        if ahead:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return max(ahead)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    raise TimeoutError(f"no node trained past a checkpoint in {run_dir}")


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


@pytest.mark.slow
def test_a_killed_dp_run_keeps_every_spend_in_the_ledgers_and_the_report_calls_them_ahead(tmp_path):
    proc = start_cli(tmp_path, "dp", QUICKSTART_DP, dp_overrides(tmp_path, "dp"))
    run_dir = tmp_path / "runs" / "dp"
    kill_when_a_node_is_ahead(run_dir, proc)
    done = checkpoint_round(run_dir)  # the last aggregated round; a later ledger event was never aggregated
    before = ledger_events(run_dir)
    orphans = {c: [e for e in events if e["round"] > done] for c, events in before.items()}
    assert any(orphans.values()) and not (run_dir / "summary.json").exists()

    assert run_simulation(None, None, resume=run_dir) == run_dir
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    config = json.loads((run_dir / "config.json").read_text())
    first_part, second_part = str(config["flower_run_id"]), [str(k) for k in config["resumed_flower_run_ids"]]
    assert len(second_part) == 1
    after = ledger_events(run_dir)
    for client, events in after.items():
        # Nothing dropped, merged or forgiven: the ledger before the kill is, event for event, where it starts.
        assert events[:len(before.get(client, []))] == before.get(client, []), client
        # Every training the metrics say was aggregated (or screened out) is one event of the part that ran it,
        # and the rounds trained before the kill but never aggregated are on top, each once.
        trained = [r["round"] for r in rounds[1:]
                   if client in {c["client"] for c in r["train"]["clients"] + r["train"]["rejected"]}]
        recorded_first = sorted(e["round"] for e in events if e["run"] == first_part)
        recorded_second = sorted(e["round"] for e in events if e["run"] == second_part[0])
        assert recorded_first == sorted([t for t in trained if t <= done] + [e["round"] for e in orphans[client]])
        assert recorded_second == [t for t in trained if t > done]
        assert len(events) == len(trained) + len(orphans[client])
        # The spend composes over every event: epsilon only grows, the orphan round's included.
        eps = [e["epsilon_after"] for e in events]
        assert eps == sorted(eps) and len(set(eps)) == len(eps)
        for orphan in orphans[client]:  # trained again after the resume, and spent again
            assert orphan["round"] in recorded_second

    report = json.loads((run_dir / "report.json").read_text())
    check = report["privacy"]["ledger_check"]
    status = {c["client_id"]: c["status"] for c in check["clients"]}
    assert status == {c: ("ledger ahead" if orphans[c] else "match") for c in after}, check
    assert check["ok"] and "never aggregated" in check["status"], check
    summary = json.loads((run_dir / "summary.json").read_text())
    for client, report_of_client in summary["privacy"]["clients"].items():  # the hospital's epsilon is its ledger's
        assert report_of_client["epsilon"] == after[client][-1]["epsilon_after"]


def central_overrides(tmp_path: Path, name: str) -> dict:
    """Client-level DP with server-side adaptive clipping: 3 hospitals, all sampled, 3 rounds."""
    return {"data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
            "synth-samples": 300, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 3,
            "local-epochs": 1, "central-dp": "server-adaptive", "central-dp-clipping-norm": 0.01,
            "central-dp-noise-multiplier": 0.8, "central-dp-clipped-count-stddev": 1.0}


def journal_rounds(run_dir: Path) -> list[int]:
    try:
        return [r["round"] for r in json.loads((run_dir / RELEASES_FILE).read_text())["releases"]]
    except (OSError, ValueError):
        return []


@pytest.mark.slow
def test_a_killed_central_dp_run_resumes_its_account_and_counts_the_release_it_died_after(tmp_path):
    for attempt in range(3):  # the kill must land between a release and its checkpoint; under load it can miss
        name = f"central-{attempt}"
        proc = start_cli(tmp_path, name, QUICKSTART, central_overrides(tmp_path, name))
        run_dir = tmp_path / "runs" / name
        deadline = time.time() + 300
        while True:  # kill between a release and its checkpoint: the released model was already out
            done = checkpoint_round(run_dir)
            if done >= 1 and len(journal_rounds(run_dir)) > done:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                break
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.02)
        checkpoint = Checkpoint.load(run_dir)
        done, lost = checkpoint.server_round, journal_rounds(run_dir)[checkpoint.server_round:]
        if lost:  # else the checkpoint was written between the look and the kill: nothing to test, try again
            break
    assert checkpoint.central["release_rounds"] == list(range(1, done + 1)) and lost == [done + 1]
    # The mode the run started in is the only one it continues in; off would drop the noise mid-run.
    for mode in ("off", "server-fixed"):
        with pytest.raises(ConfigError, match="central-dp"):
            resume_config(run_dir, {"central-dp": mode})

    assert run_simulation(None, None, resume=run_dir) == run_dir
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    # Every release is in the account: the checkpointed ones, the one made before the kill, the reruns.
    assert journal_rounds(run_dir) == [*range(1, done + 1), *lost, *range(done + 1, 4)]
    z, delta = 0.8, rounds[1]["central_dp"]["delta"]
    for entry in rounds[1:]:
        dp = entry["central_dp"]
        releases = entry["round"] + (len(lost) if entry["round"] > done else 0)
        assert dp["releases"] == releases and dp["effective_noise_multipliers"] == pytest.approx([z / 2] * releases)
        # The epsilon of an uninterrupted run with the same releases, recomputed with dp-accounting.
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(z / 2), releases)
        assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    final = json.loads((run_dir / "summary.json").read_text())["privacy"]["central_dp"]
    assert final["epsilon"] == rounds[-1]["central_dp"]["epsilon"] > epsilon_after(z, 3, delta)  # nothing forgiven
    assert final["epsilon"] == pytest.approx(epsilon_after(z, 3 + len(lost), delta), rel=1e-9)
    # The adaptive clipping norm continues from the checkpointed round's, not from the configured 0.01.
    resumed = rounds[done + 1]["central_dp"]["clipping_norm"]
    assert resumed == rounds[done]["central_dp"]["next_clipping_norm"] == checkpoint.central["clipping_norm"]
    assert resumed != 0.01


@pytest.mark.slow
def test_a_resume_refuses_every_key_that_decides_what_was_trained_and_records_what_it_may_change(tmp_path):
    """Issue 20: `--resume` took any --set (model, dp, seed, data-dir, ...) and signed the original config.
    Every key outside RESUMABLE_KEYS is refused by name, whatever its new value; a longer run is allowed,
    recorded per resumed part in config.json and in the signed report, whose config says what it ended under."""
    from shared_models.settings.run_settings import RESUMABLE_KEYS

    run_dir = run_simulation(None, {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "honest",
        "synth-samples": 240, "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1,
        "batch-size": 16})
    saved = json.loads((run_dir / "config.json").read_text())["run_config"]
    refused = sorted(set(saved) - RESUMABLE_KEYS)
    assert {"model", "dp", "seed", "data-dir", "num-supernodes", "aggregation", "dp-epsilon"} <= set(refused)
    for key in refused:
        old = saved[key]
        new = (not old if isinstance(old, bool) else old + 1 if isinstance(old, (int, float))
               else f"{old}-changed")
        with pytest.raises(ConfigError, match=f"{key} cannot change on resume"):
            resume_config(run_dir, {key: new})

    assert run_simulation(None, {"num-server-rounds": 2}, resume=run_dir) == run_dir
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run_config"]["num-server-rounds"] == 2
    [part] = config["resumed_parts"]
    assert part["changed"] == {"num-server-rounds": [1, 2]} and part["started"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["resumed_parts"] == [part] and report["config"]["num-server-rounds"] == 2
    assert report["run"]["rounds_planned"] == 2 and report["run"]["rounds_completed"] == 2
    assert fedemo(["verify", str(run_dir)]) == 0


@pytest.mark.slow
def test_two_resumes_at_once_the_second_is_refused_in_one_line(tmp_path, capsys):
    """Issue 20: two `--resume` of one run both succeeded and wrote rounds [0,1,2,3,3,4,4,5,5] into a report
    that verified. The running coordinator holds the run folder; a second resume is refused before it starts."""
    run_dir = run_simulation(None, {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": "locked",
        "synth-samples": 240, "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1,
        "batch-size": 16})
    fedemo_bin = shutil.which("fedemo", path=str(Path(sys.executable).parent))
    first = subprocess.Popen([fedemo_bin, "simulate", "--resume", str(run_dir), "--set", "num-server-rounds=4"],
                             cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = run_dir / "run.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()):  # the first resume holds the folder
        assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
        time.sleep(0.02)
    code = fedemo(["simulate", "--resume", str(run_dir), "--set", "num-server-rounds=4"])
    err = capsys.readouterr().err
    assert code == 2 and "is in use by another FedEmo process" in err and "Traceback" not in err
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3, 4]
    assert lock.read_text() == ""  # released at the end of the run
    assert fedemo(["verify", str(run_dir)]) == 0


def test_a_run_saved_before_a_key_existed_resumes_with_its_default_but_not_with_another_value(tmp_path):
    """A later FedEmo adds keys; a run folder written before them has no such key in config.json. Its
    default is what the older code did, so resuming with it changes nothing; any other value is refused."""
    from shared_models.settings.defaults import default_run_config
    from shared_models.settings.run_settings import check_resume_changes, resume_changes

    defaults = default_run_config()
    saved = {k: v for k, v in defaults.items() if k not in ("consent-default", "audit")}  # an older run's config
    assert resume_changes(saved, defaults) == {}
    check_resume_changes(resume_changes(saved, defaults), tmp_path)  # nothing refused
    changed = {**defaults, "audit": "client"}
    assert resume_changes(saved, changed) == {"audit": [None, "client"]}
    with pytest.raises(ConfigError, match="audit cannot change on resume"):
        check_resume_changes(resume_changes(saved, changed), tmp_path)
    with pytest.raises(ConfigError, match="seed cannot change on resume"):  # a key the run saved: as before
        check_resume_changes(resume_changes(saved, {**defaults, "seed": defaults["seed"] + 1}), tmp_path)
