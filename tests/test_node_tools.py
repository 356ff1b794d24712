"""The hospital's own tools: `fedemo node check` against real TLS sockets, `fedemo node sent` on a real audit.

`node check` runs against servers started here on loopback with certificates
from `fedemo credentials init`: one that answers like a SuperLink's Fleet API
(HTTP 401 to an unsigned request), and ones that go wrong in each way a
hospital meets (another federation's CA, a certificate without the dialled
name, nothing listening, a port that never speaks TLS, plain HTTP). The
check against Flower's own SuperLink is in tests/test_deployment.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import socketserver
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main as fedemo_main

UNSIGNED_ANSWER = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 47\r\n\r\n{\"detail\":\"Invalid SuperNode authentication\"}\r\n"


def fedemo(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fedemo_main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def creds(tmp_path_factory) -> dict[str, Path]:
    """Three federations' credentials: ours, a foreign one, and one whose certificate names another host."""
    root = tmp_path_factory.mktemp("creds")
    for name, names in (("ours", ["--superlink-host", "localhost", "--superlink-ip", "127.0.0.1"]),
                        ("foreign", ["--superlink-host", "localhost", "--superlink-ip", "127.0.0.1"]),
                        ("elsewhere", ["--superlink-host", "coordinator.example.org"])):
        code, output = fedemo("credentials", "init", root / name, *names, "--hospital", "hospital-a")
        assert code == 0, output
    return {name: root / name for name in ("ours", "foreign", "elsewhere")}


@contextlib.contextmanager
def serving(answer: bytes | None, creds_dir: Path | None):
    """A loopback server on a free port: TLS with creds_dir's SuperLink certificate (None: plain TCP).

    It reads one request and writes ``answer`` (None: says nothing at all, holding the connection open).
    """
    done = threading.Event()
    context = None
    if creds_dir is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(creds_dir / "superlink" / "server.crt", creds_dir / "superlink" / "server.key")

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            sock.settimeout(5)
            try:
                if context is not None:
                    sock = context.wrap_socket(sock, server_side=True)
                sock.recv(4096)
                if answer is None:
                    done.wait(10)
                else:
                    sock.sendall(answer)
            except (OSError, ssl.SSLError):  # the client gave up on our certificate: its side is under test
                pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        done.set()
        server.shutdown()
        server.server_close()


def hospital(creds_dir: Path, name: str = "hospital-a") -> Path:
    return creds_dir / "hospitals" / name


def test_a_node_with_its_federations_ca_and_registered_key_is_ready(creds):
    keys = hospital(creds["ours"])
    with serving(UNSIGNED_ANSWER, creds["ours"]) as port:
        code, out = fedemo("node", "check", "--superlink", f"localhost:{port}", "--root-certificates",
                           keys / "ca.crt", "--auth-supernode-private-key", keys / "auth.key",
                           "--registered", creds["ours"] / "federation.json")
    assert code == 0, out
    assert "FAILED" not in out and out.rstrip().endswith("Ready: this node can reach the coordinator with its "
                                                          "certificate and key.")
    assert f"signed by {keys / 'ca.crt'} and names localhost (it names localhost, 127.0.0.1" in out
    assert "requires SuperNode authentication" in out
    assert "auth.pub is this key's public half" in out and "as 'hospital-a'" in out


def test_another_federations_ca_fails_with_a_clear_message(creds):
    with serving(UNSIGNED_ANSWER, creds["ours"]) as port:
        code, out = fedemo("node", "check", "--superlink", f"localhost:{port}",
                           "--root-certificates", creds["foreign"] / "ca" / "ca.crt", "--json")
    result = json.loads(out)
    assert code == 1 and not result["ready"]
    tls = next(s for s in result["steps"] if s["name"] == "TLS")
    assert not tls["ok"] and "certificate verify failed" in tls["detail"]
    assert f"is not signed by the CA in {creds['foreign'] / 'ca' / 'ca.crt'}" in tls["detail"]
    assert "ca_fingerprint" in tls["fix"]
    assert [s["name"] for s in result["steps"]][-1] == "TLS"  # nothing is sent over an unverified connection


def test_a_certificate_without_the_dialled_name_is_a_hostname_mismatch(creds):
    with serving(UNSIGNED_ANSWER, creds["elsewhere"]) as port:
        code, out = fedemo("node", "check", "--superlink", f"127.0.0.1:{port}",
                           "--root-certificates", creds["elsewhere"] / "ca" / "ca.crt")
    assert code == 1
    assert ("hostname mismatch: the SuperLink's certificate names coordinator.example.org, not 127.0.0.1"
            in out), out


def test_a_ca_file_that_is_no_certificate_is_named_before_dialling():
    code, out = fedemo("node", "check", "--superlink", "127.0.0.1:9", "--root-certificates", Path(__file__))
    assert code == 1 and f"CA certificate: {Path(__file__)} is not a PEM certificate" in out
    assert "TCP" not in out


def test_refused_and_silent_ports_are_told_apart(creds, tmp_path):
    ca = creds["ours"] / "ca" / "ca.crt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        code, out = fedemo("node", "check", "--superlink", f"127.0.0.1:{s.getsockname()[1]}",
                           "--root-certificates", ca)
    assert code == 1 and "connection refused at 127.0.0.1" in out and "nothing listens on that port" in out
    with serving(None, None) as port:  # accepts, reads, never answers: no TLS handshake ever completes
        code, out = fedemo("node", "check", "--superlink", f"127.0.0.1:{port}", "--root-certificates", ca,
                           "--timeout", "1")
    assert code == 1 and "did not complete a TLS handshake within 1 s" in out


def test_a_plain_http_server_is_not_tls(creds):
    with serving(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", None) as port:
        code, out = fedemo("node", "check", "--superlink", f"127.0.0.1:{port}",
                           "--root-certificates", creds["ours"] / "ca" / "ca.crt")
    assert code == 1 and f"127.0.0.1:{port} does not speak TLS" in out and "--insecure" in out


def test_a_tls_server_that_is_not_a_fleet_api_says_so(creds):
    with serving(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", creds["ours"]) as port:
        code, out = fedemo("node", "check", "--superlink", f"localhost:{port}",
                           "--root-certificates", creds["ours"] / "ca" / "ca.crt")
    assert code == 1 and "TLS: the SuperLink's certificate is signed" in out and "not a Flower 1.41" in out


def test_an_unregistered_or_unreadable_key_is_named(creds, tmp_path):
    foreign = hospital(creds["foreign"])
    with serving(UNSIGNED_ANSWER, creds["ours"]) as port:
        code, out = fedemo("node", "check", "--superlink", f"localhost:{port}",
                           "--root-certificates", hospital(creds["ours"]) / "ca.crt",
                           "--auth-supernode-private-key", foreign / "auth.key",
                           "--registered", creds["ours"] / "federation.json")
    assert code == 1 and "registration (local list): this key (SHA256:" in out and "code: 2004" in out
    assert "TLS: the SuperLink's certificate is signed" in out  # the network part was fine
    # A list of auth.pub lines works as the coordinator's list too
    listed = tmp_path / "registered.pub"
    listed.write_text((foreign / "auth.pub").read_text())
    bad_key = tmp_path / "auth.key"
    bad_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n")
    code, out = fedemo("node", "check", "--superlink", "localhost", "--root-certificates", bad_key,
                       "--auth-supernode-private-key", bad_key)
    assert code == 1 and "'localhost' is not HOST:PORT" in out
    assert "cannot be read as an OpenSSH EC private key" in out and "Unable to parse the private key file" in out
    from client.tools.node_check import key_steps

    steps = key_steps(foreign / "auth.key", listed)
    assert [s.ok for s in steps] == [True, True, True] and f"this key is in {listed} as '" in steps[-1].detail


# --- fedemo node sent -------------------------------------------------------------------------------------------


def _audit_line(run: int, round_: int, kind: str, content=None, error: str | None = None) -> str:
    """One line as client/tools/outgoing_audit.py writes it, the records described by its own describe_content."""
    from client.tools.outgoing_audit import describe_content

    return json.dumps({"time": 1796165175.0 + round_, "run": run, "message_type": kind, "round": round_,
                       "error": error, "records": describe_content(content) if content is not None else {}},
                      sort_keys=True) + "\n"


def _train_reply(dp: bool):
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from shared_models import messages as msgs

    arrays = ArrayRecord({"conv.weight": Array(np.zeros((8, 1, 3, 3), np.float32)),
                          "fc.bias": Array(np.zeros(7, np.float32))})
    metrics = {msgs.NUM_EXAMPLES: 120, msgs.UPDATE_WEIGHT: 1}
    metrics.update({msgs.DP_EPSILON_SPENT: 1.5, msgs.DP_NOISE_MULTIPLIER: 1.2} if dp else {msgs.TRAIN_LOSS: 0.7})
    return RecordDict({msgs.ARRAYS: arrays, msgs.METRICS: MetricRecord(metrics),
                       msgs.CLIENT: ConfigRecord({msgs.CLIENT_ID: "hospital-a"})})


def _evaluate_reply(noised: bool):
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from shared_models import messages as msgs

    metrics = {msgs.NUM_EXAMPLES: 30, msgs.UPDATE_WEIGHT: 1, msgs.CONFUSION: [1] * 49,
               "grp.sex.female": [1] * 49, "grp.sex.male": [1] * 49}
    metrics.update({msgs.GROUP_DP_NOISE_MULTIPLIER: 2.0, msgs.GROUP_DP_EPSILON_SPENT: 1.8} if noised
                   else {msgs.LOSS_SUM: 12.5})
    return RecordDict({msgs.METRICS: MetricRecord(metrics), msgs.CLIENT: ConfigRecord({msgs.CLIENT_ID: "hospital-a"})})


def test_node_sent_tells_per_round_what_was_noised_and_accounted(tmp_path):
    from shared_models.privacy_ledger import PrivacyLedger

    ledger = PrivacyLedger.open(tmp_path, dataset_id="fer2013:/data", epsilon_budget=8.0, delta=1e-5,
                                accountant="pld", run=("7301", "20261201-face-dp"))
    ledger.record(run="7301", server_round=1, noise_multiplier=1.2, sample_rate=0.05, steps=20, max_grad_norm=1.0)
    ledger.record(run="7301", server_round=1, noise_multiplier=2.0, sample_rate=1.0, steps=2, max_grad_norm=1.4,
                  kind="eval-counts")
    (tmp_path / "outgoing_messages.jsonl").write_text(
        _audit_line(7301, 1, "train", _train_reply(dp=True)) + _audit_line(7301, 1, "evaluate", _evaluate_reply(True))
        + _audit_line(7301, 2, "train", error="BudgetExceeded: round declined"))
    code, out = fedemo("node", "sent", tmp_path)
    assert code == 0, out
    assert "Run 20261201-face-dp (Flower run 7301):" in out
    assert "round 1, train reply at 2026-" in out
    assert ("model weights: 2 arrays, 79 numbers (float32); noised and accounted: DP-SGD with noise multiplier 1.2, "
            "20 steps at sample rate 0.05, clipping norm 1") in out
    assert "metrics, public: num-examples (the local set's size, public under the threat model)" in out
    assert "metrics, DP accounting figures (the ledger's own): dp-epsilon-spent, dp-noise-multiplier" in out
    assert "2 per-group count vectors: noised and accounted (Gaussian noise, noise multiplier 2" in out
    assert "confusion (49 numbers): the sum of the noised group counts" in out
    assert "round 2, train reply" in out and "an error reply, no data: BudgetExceeded" in out
    assert "NOT noised" not in out
    assert "1 training replies, 2 replies noised and accounted in the ledger, 0 with values sent exact, 1 error" in out
    summary = json.loads(fedemo("node", "sent", tmp_path, "--json")[1])["summary"]
    assert summary["accounted"] == 2 and summary["with_unprotected_values"] == 0
    assert fedemo("node", "sent", tmp_path, "--last", "1")[1].count("reply at") == 1


def test_node_sent_without_dp_says_the_values_left_exact(tmp_path):
    (tmp_path / "outgoing_messages.jsonl").write_text(
        _audit_line(9, 1, "train", _train_reply(dp=False)) + _audit_line(9, 1, "evaluate", _evaluate_reply(False)))
    code, out = fedemo("node", "sent", tmp_path)
    assert code == 0
    assert "model weights: 2 arrays, 79 numbers (float32); NOT noised: no privacy ledger in this folder" in out
    assert "metrics, exact, NOT noised: train-loss (mean training loss)" in out
    assert ("metrics, exact, NOT noised: confusion (49 numbers) (test-set confusion counts), loss-sum (test loss "
            "sum), 2 per-group count vectors") in out
    assert "No privacy ledger in this folder: nothing this node sent was accounted" in out


def test_node_sent_without_an_audit_says_where_it_would_be(tmp_path):
    code, out = fedemo("node", "sent", tmp_path)
    assert code == 2 and "outgoing_messages.jsonl: no outgoing-message audit here" in out and "state-dir" in out
