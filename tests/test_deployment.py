"""A real deployment on loopback: Flower's own SuperLink and SuperNodes, TLS, node authentication, DP.

One federation is started for the module, as docs/deployment.md tells a user
to (every command is a real binary from the venv): `fedemo credentials init`,
`fedemo data synth` / `fedemo data check` for three hospitals in two formats,
`flower-superlink` with TLS, `--enable-supernode-auth` and a state database,
`flwr supernode register`, three `flower-supernode`s with their keys and node
configs, and `flwr run` against a TLS connection in the researcher's
FLWR_HOME. The tests then check the run folder, the nodes' ledgers and
outgoing-message audits, that an unregistered node is refused and that a
connection without TLS fails, and that a hospital's `fedemo node check`,
`fedemo node sent` and `fedemo ledger` work against it. Every process is
started in its own process group and killed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from simulations.cli import main as fedemo_main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# name -> (format, samples, seed): two published face layouts, different sizes (the audit test uses that)
HOSPITALS = {"hospital-a": ("fer2013", 120, 1), "hospital-b": ("rafdb", 150, 2), "hospital-c": ("fer2013", 180, 3)}
ROUNDS = 2
CONSENT_HOSPITAL = "hospital-b"  # keeps a consent manifest (a fifth refused) and has one withdrawal before the run
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 540


def _tool(name: str) -> str | None:
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


MISSING = [name for name in ("flower-superlink", "flower-supernode", "flwr") if _tool(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Federation:
    root: Path
    env: dict[str, str]  # the researcher's environment (FLWR_HOME with the TLS connection)
    port: int
    creds: Path
    run_dir: Path
    run_output: str
    run_returncode: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def state_dir(self, hospital: str) -> Path:
        return self.root / hospital / "state"

    def run(self, *argv: str, timeout: float = 120) -> tuple[int | None, str]:
        return _run_to_exit(list(argv), self.env, self.root, timeout)


def _run_to_exit(argv: list[str], env: dict, cwd: Path, timeout: float) -> tuple[int | None, str]:
    """(exit code or None on timeout, output). Output goes through a file and the whole process group is
    killed afterwards: a SuperNode's SuperExec child would otherwise hold a pipe open after its parent exits."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        return code, out.read()


def _start(processes: dict, root: Path, name: str, argv: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    log = (root / f"{name}.log").open("w")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes[name] = proc
    return proc


def _stop(processes: dict) -> None:
    """SIGTERM each process group we started, then SIGKILL what is left (ClientApps, SuperExecs included)."""
    for proc in processes.values():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5
    for proc in processes.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _fedemo(*argv: str) -> tuple[int, str]:
    """The `fedemo` command's own entry point, in this process (saves a torch import per call)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fedemo_main(list(argv))
    return code, out.getvalue()


def _wait_for_tls(port: int, ca: Path, proc: subprocess.Popen, log: Path) -> None:
    """Until the SuperLink completes a TLS handshake for `localhost` with the federation CA."""
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"flower-superlink exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("localhost", port), timeout=2) as sock:
                with context.wrap_socket(sock, server_hostname="localhost"):
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"flower-superlink did not accept TLS on port {port}:\n{log.read_text()[-3000:]}")


def _wait_online(fed_env: dict, root: Path, n: int, processes: dict) -> None:
    deadline = time.time() + STARTUP_TIMEOUT_S
    while time.time() < deadline:
        _, out = _run_to_exit([_tool("flwr"), "supernode", "list", "fedemo", "--format", "json"], fed_env, root, 60)
        if out.count('"online"') >= n:
            return
        for name, proc in processes.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{(root / f'{name}.log').read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"fewer than {n} SuperNodes came online; last listing:\n{out}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    if MISSING:
        pytest.skip(f"Flower deployment binaries not installed: {', '.join(MISSING)}")
    root = tmp_path_factory.mktemp("deployment")
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    base_env = {**os.environ, "PATH": path, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    researcher_env = {**base_env, "FLWR_HOME": str(root / "researcher-flwr-home")}
    creds = root / "creds"
    port = _free_port()
    processes: dict[str, subprocess.Popen] = {}

    def must(*argv: str, timeout: float = 120) -> str:
        code, output = _run_to_exit(list(argv), researcher_env, root, timeout)
        assert code == 0, f"{' '.join(argv)} exited with {code}:\n{output[-3000:]}"
        return output

    def fedemo(*argv: str) -> str:
        code, output = _fedemo(*argv)
        assert code == 0, f"fedemo {' '.join(argv)} exited with {code}:\n{output}"
        return output

    try:
        # The federation's credentials, one hospital more than will be registered.
        hospitals = [arg for name in [*HOSPITALS, "unregistered"] for arg in ("--hospital", name)]
        fedemo("credentials", "init", str(creds), "--superlink-host", "localhost", "--superlink-ip", "127.0.0.1",
               *hospitals)
        # Each hospital's data, written in its published layout and checked locally before joining.
        for name, (fmt, n, seed) in HOSPITALS.items():
            consent = ["--consent-refusal-rate", "0.2"] if name == CONSENT_HOSPITAL else []
            fedemo("data", "synth", fmt, "--out", str(root / name / "data"), "--n", str(n), "--seed", str(seed),
                   *consent)
            report = json.loads(fedemo("data", "check", str(root / name / "data"), "--format", fmt, "--json"))
            assert report["ready"] and report["samples"] == n - report["consent"].get("excluded", 0), report
            if consent:  # a patient withdraws: recorded in the node's state folder before it starts
                record = _consented_record(root / name / "data")
                fedemo("node", "withdraw", "--state-dir", str(root / name / "state"), "--dataset-id",
                       f"{name}-{fmt}", "--data-path", str(root / name / "data"), "--format", fmt, record)

        # The coordinator: TLS, node authentication, a persistent state database.
        superlink = creds / "superlink"
        _start(processes, root, "superlink", [
            _tool("flower-superlink"), "--ssl-ca-certfile", str(superlink / "ca.crt"),
            "--ssl-certfile", str(superlink / "server.crt"), "--ssl-keyfile", str(superlink / "server.key"),
            "--enable-supernode-auth", "--database", str(root / "coordinator" / "state.db"),
            "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation",
        ], {**base_env, "FLWR_HOME": str(root / "coordinator" / "flwr-home")}, root / "coordinator")
        _wait_for_tls(port, creds / "ca" / "ca.crt", processes["superlink"], root / "superlink.log")

        # The researcher's Flower config: a TLS connection (and, for the negative test, a plain one).
        home = Path(researcher_env["FLWR_HOME"])
        home.mkdir(parents=True)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "fedemo"\n\n'
            f'[superlink.fedemo]\naddress = "localhost:{port}"\nroot-certificates = "{creds / "ca" / "ca.crt"}"\n\n'
            f'[superlink.plain]\naddress = "localhost:{port}"\ninsecure = true\n')
        for name in HOSPITALS:
            must(_tool("flwr"), "supernode", "register", str(creds / "hospitals" / name / "auth.pub"), "fedemo",
                 "--name", name)

        # The researcher's run: the shipped deployment config, shortened (published to the hospitals before).
        config = tomllib.loads((REPO / "configs" / "deployment_dp.toml").read_text())
        config.update({"num-server-rounds": ROUNDS, "min-available-nodes": len(HOSPITALS),
                       "runs-dir": str(root / "runs"), "run-name": "deployed", "batch-size": 16})
        run_config = root / "run.toml"
        run_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))

        # The hospitals: each with the CA, its own key and a node config naming its data and state folder;
        # approve-first: each operator approves the run's spend plan before its dataset's first spend.
        for name, (fmt, _, _) in HOSPITALS.items():
            keys = creds / "hospitals" / name
            node_config = (f'data-path="{root / name / "data"}" dataset-format="{fmt}" '
                           f'dataset-id="{name}-{fmt}" state-dir="{root / name / "state"}" client-id="{name}" '
                           'approve-first=true')
            assert "this dataset has never spent" in fedemo("node", "approve", "--node-config", node_config,
                                                           "--run-config", str(run_config), "--yes")
            _start(processes, root, name, [
                _tool("flower-supernode"), "--superlink", f"localhost:{port}",
                "--root-certificates", str(keys / "ca.crt"), "--auth-supernode-private-key", str(keys / "auth.key"),
                "--node-config", node_config, "--port", str(_free_port()),
            ], {**base_env, "FLWR_HOME": str(root / name / "flwr-home")}, root / name)
        _wait_online(researcher_env, root, len(HOSPITALS), processes)

        # The researcher: that config through `flwr run` over TLS.
        code, output = _run_to_exit([_tool("flwr"), "run", ".", "fedemo", "--run-config", str(run_config),
                                     "--stream"], researcher_env, REPO, RUN_TIMEOUT_S)
        yield Federation(root=root, env=researcher_env, port=port, creds=creds, run_dir=root / "runs" / "deployed",
                         run_output=output, run_returncode=code, processes=processes)
    finally:
        _stop(processes)


def _rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _consented_record(data: Path) -> str:
    return next(line.split(",")[0] for line in (data / "consent.csv").read_text().splitlines() if ",yes," in line)


def test_consent_manifest_and_withdrawal_are_honoured_and_reported(federation):
    """Hospital B's refused and withdrawn records stay home: counts and the manifest's hash leave, no record id."""
    import hashlib

    assert federation.run_returncode == 0, federation.run_output[-4000:]
    data = federation.root / CONSENT_HOSPITAL / "data"
    manifest = (data / "consent.csv").read_bytes()
    refused = manifest.decode().count(",no,")
    withdrawn = _consented_record(data)
    for entry in _rounds(federation.run_dir)[1:]:
        for client in entry["train"]["clients"]:
            consent = client["consent"]
            assert consent["used"] == client["num_examples"]
            if client["client"] == CONSENT_HOSPITAL:
                assert consent["manifest"] == hashlib.sha256(manifest).hexdigest()
                assert consent["excluded"] == refused + 1 and consent["withdrawn"] == 1
            else:
                assert consent["manifest"] == "" and consent["excluded"] == 0
    # The training-set size is the consented count less the withdrawal, less the test split.
    report = json.loads((federation.run_dir / "report.json").read_text())["consent"]
    assert {c["client"]: c["applied"] for c in report["clients"]} == {name: name == CONSENT_HOSPITAL
                                                                     for name in HOSPITALS}
    sent = (federation.state_dir(CONSENT_HOSPITAL) / "outgoing_messages.jsonl").read_text()
    assert "consent-sha256" in sent and withdrawn not in sent  # (client values: short strings, checked below)
    assert withdrawn not in (federation.run_dir / "metrics.jsonl").read_text()


def test_dp_federation_runs_over_tls_with_authenticated_nodes(federation):
    assert federation.run_returncode == 0, federation.run_output[-4000:]
    rounds = _rounds(federation.run_dir)
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    for entry in rounds:
        assert sorted(c["client"] for c in entry["evaluate"]["clients"]) == sorted(HOSPITALS)
        assert not entry["evaluate"]["failures"]
    # DP-SGD on every hospital, each spend composed in its own ledger in its own state folder.
    epsilons: dict[str, list[float]] = {name: [] for name in HOSPITALS}
    for entry in rounds[1:]:
        assert not entry["train"]["failures"]
        for client in entry["train"]["clients"]:
            epsilons[client["client"]].append(client["dp"]["epsilon"])
    for name, eps in epsilons.items():
        assert len(eps) == ROUNDS and 0 < eps[0] < eps[1] <= 8.0, (name, eps)
        ledger = json.loads((federation.state_dir(name) / "privacy_ledger.json").read_text())
        train_events = [e for e in ledger["events"] if e["kind"] == "train"]  # besides noised evaluations
        assert len(train_events) == ROUNDS
        assert train_events[-1]["epsilon_after"] == pytest.approx(eps[-1])
    summary = json.loads((federation.run_dir / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and sorted(summary["privacy"]["clients"]) == sorted(HOSPITALS)
    # The coordinator held no data: nothing was synthesised for it, nothing named a data folder.
    assert json.loads((federation.run_dir / "config.json").read_text())["data_dir"] == ""
    assert not (federation.root / "coordinator" / "data").exists()
    assert not (federation.run_dir / "node-state").exists()  # the ledgers are at the hospitals, not here

    # The signed report (written by the ServerApp since the report feature landed): it must verify.
    if (federation.run_dir / "report.json").exists():
        code, output = _fedemo("verify", str(federation.run_dir))
        assert code == 0, output
    else:  # an older ServerApp without signed reports: the run folder checks above are the contract
        pytest.fail("no report.json in the run folder; the ServerApp writes one at the end of every run")


def test_unregistered_node_is_refused(federation):
    keys = federation.creds / "hospitals" / "unregistered"
    name = "hospital-a"
    code, output = federation.run(
        _tool("flower-supernode"), "--superlink", f"localhost:{federation.port}",
        "--root-certificates", str(keys / "ca.crt"), "--auth-supernode-private-key", str(keys / "auth.key"),
        "--node-config", f'data-path="{federation.root / name / "data"}" dataset-format="fer2013" '
                         f'state-dir="{federation.root / "intruder-state"}"',
        "--port", str(_free_port()), "--max-retries", "1", "--max-wait-time", "15", timeout=120)
    assert code not in (0, None), output
    assert "Failed to activate SuperNode" in output
    code, output = federation.run(_tool("flwr"), "supernode", "list", "fedemo", "--format", "json")
    listing = json.loads(output[output.index("{"):])
    assert len(listing["nodes"]) == len(HOSPITALS)  # still only the registered hospitals


def test_connection_without_tls_fails(federation):
    # The researcher's CLI over plain HTTP is refused; over TLS (the positive control) it works.
    code, output = federation.run(_tool("flwr"), "supernode", "list", "plain")
    assert code not in (0, None) and "unavailable" in output, output
    assert federation.run(_tool("flwr"), "supernode", "list", "fedemo")[0] == 0
    # A SuperNode without TLS cannot connect either.
    code, output = federation.run(
        _tool("flower-supernode"), "--superlink", f"localhost:{federation.port}", "--insecure",
        "--node-config", f'data-path="{federation.root / "hospital-a" / "data"}" dataset-format="fer2013"',
        "--port", str(_free_port()), "--max-retries", "1", "--max-wait-time", "15", timeout=120)
    assert code not in (0, None) and "could not establish a connection" in output, output
    # And a raw TLS-less HTTP request gets no HTTP answer from the TLS port.
    with socket.create_connection(("127.0.0.1", federation.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.settimeout(5)
        try:
            answer = sock.recv(1024)
        except (ConnectionResetError, socket.timeout):
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer


def test_nodes_send_only_model_arrays_and_aggregates(federation):
    """Every reply each hospital sent, as its outgoing-message audit recorded it (client/tools/outgoing_audit.py)."""
    assert federation.run_returncode == 0, federation.run_output[-4000:]
    from shared_models.models.registry import build_model

    model = tomllib.loads((REPO / "configs" / "deployment_dp.toml").read_text())["model"]
    model_shapes = {k: list(v.shape) for k, v in build_model(model).state_dict().items()}
    metric_lengths: dict[str, set[int]] = {}
    rounds = _rounds(federation.run_dir)
    for name in HOSPITALS:
        lines = (federation.state_dir(name) / "outgoing_messages.jsonl").read_text().splitlines()
        replies = [json.loads(line) for line in lines]
        kinds = [r["message_type"] for r in replies]
        # The audit saw every reply the coordinator received from this node, and no failures.
        assert kinds.count("train") == sum(name in [c["client"] for c in r["train"]["clients"]] for r in rounds[1:])
        assert kinds.count("evaluate") == len(rounds)
        for reply in replies:
            assert reply["error"] is None, reply
            records = reply["records"]
            allowed = {"metrics": "MetricRecord", "client": "ConfigRecord"}
            if reply["message_type"] == "train":
                allowed["arrays"] = "ArrayRecord"  # only training replies carry weights
            assert {k: v["type"] for k, v in records.items()} == allowed, records
            if "arrays" in records:  # exactly the model's parameters and buffers, nothing else
                assert {k: v["shape"] for k, v in records["arrays"]["items"].items()} == model_shapes
            for key, value in records["client"]["items"].items():  # identifiers, not data
                assert value["type"] == "str" and value["len"] <= 64, (key, value)
            for key, value in records["metrics"]["items"].items():
                if "list" in value:
                    metric_lengths.setdefault(f"{reply['message_type']}:{key}", set()).add(value["list"])
    # Aggregates, not per-sample outputs: each list has one length at every hospital, although the
    # hospitals hold 120, 150 and 180 samples (a per-sample output would have as many entries).
    assert metric_lengths, "no count vectors were sent (the confusion matrix at least is expected)"
    assert metric_lengths["evaluate:confusion"] == {49}
    for key, lengths in metric_lengths.items():
        assert len(lengths) == 1, (key, lengths)


def test_a_hospital_checks_its_connection_and_reads_what_it_sent(federation):
    """`fedemo node check` against Flower's own SuperLink, joining nothing; `fedemo node sent` on a real audit."""
    assert federation.run_returncode == 0, federation.run_output[-4000:]
    keys = federation.creds / "hospitals" / "hospital-a"
    code, output = _fedemo("node", "check", "--superlink", f"localhost:{federation.port}",
                           "--root-certificates", str(keys / "ca.crt"), "--auth-supernode-private-key",
                           str(keys / "auth.key"), "--registered", str(federation.creds / "federation.json"))
    assert code == 0, output
    assert "requires SuperNode authentication" in output and "as 'hospital-a'" in output
    assert "only the local list was checked, not the SuperLink" in output
    # Asked of the SuperLink itself (its Control API's node list): registered, and the unregistered key is not.
    for name, ready in (("hospital-a", True), ("unregistered", False)):
        keys = federation.creds / "hospitals" / name
        code, output = _fedemo("node", "check", "--superlink", f"localhost:{federation.port}",
                               "--root-certificates", str(keys / "ca.crt"), "--auth-supernode-private-key",
                               str(keys / "auth.key"), "--registered")
        assert (code == 0) is ready, output
        assert ("the SuperLink lists this key as node" in output) is ready, output
    # Another federation's CA is refused with the reason, in words
    foreign = federation.root / "foreign-creds"
    assert _fedemo("credentials", "init", str(foreign), "--superlink-host", "localhost")[0] == 0
    code, output = _fedemo("node", "check", "--superlink", f"localhost:{federation.port}",
                           "--root-certificates", str(foreign / "ca" / "ca.crt"))
    assert code == 1 and "certificate verify failed" in output and "is not signed by the CA in" in output, output
    code, output = federation.run(_tool("flwr"), "supernode", "list", "fedemo", "--format", "json")
    assert len(json.loads(output[output.index("{"):])["nodes"]) == len(HOSPITALS)  # the check joined nothing

    code, output = _fedemo("node", "sent", str(federation.state_dir("hospital-a")))
    assert code == 0, output
    assert "Run deployed (Flower run " in output  # the ledger names the run by its run folder
    assert output.count("noised and accounted: DP-SGD") == ROUNDS
    code, output = _fedemo("ledger", str(federation.root))  # every hospital's ledger under one folder
    assert code == 0 and all(f"{name}/state: training spent" in output for name in HOSPITALS), output
    assert output.count("run deployed: 2 rounds") == len(HOSPITALS)
