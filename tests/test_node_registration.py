"""`fedemo node check --registered` asks Flower's own SuperLink whether the node's key is registered.

A key listed in `federation.json` is not yet a registered key: the coordinator
registers each with `flwr supernode register`, and a node whose key it has
not registered is refused on start. Here a real `flower-superlink` (TLS,
`--enable-supernode-auth`) has registered hospital-a only, while
`federation.json` lists hospital-a and hospital-b. `--registered` without a
file asks the SuperLink (its Control API lists registered keys) and tells the
two apart; `--registered federation.json` compares with that local list only
and says so in the step.
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
import time
from pathlib import Path

import pytest

from simulations.cli import main as fedemo_main

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _tool(name: str) -> str | None:
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


def _fedemo(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fedemo_main([str(a) for a in argv])
    return code, out.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    """A TLS SuperLink with node authentication that registered hospital-a (not hospital-b)."""
    if _tool("flower-superlink") is None or _tool("flwr") is None:
        pytest.skip("Flower's deployment binaries are not installed")
    root = tmp_path_factory.mktemp("registration")
    creds, port = root / "creds", _free_port()
    code, out = _fedemo("credentials", "init", creds, "--superlink-host", "localhost", "--superlink-ip",
                        "127.0.0.1", "--hospital", "hospital-a", "--hospital", "hospital-b")
    assert code == 0, out
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    log = (root / "superlink.log").open("w")
    proc = subprocess.Popen([
        _tool("flower-superlink"), "--ssl-ca-certfile", str(creds / "superlink" / "ca.crt"),
        "--ssl-certfile", str(creds / "superlink" / "server.crt"),
        "--ssl-keyfile", str(creds / "superlink" / "server.key"), "--enable-supernode-auth",
        "--database", str(root / "state.db"), "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
    ], cwd=root, env={**env, "FLWR_HOME": str(root / "superlink-home")}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=str(creds / "ca" / "ca.crt"))
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (root / "superlink.log").read_text()[-3000:]
            try:
                with socket.create_connection(("localhost", port), timeout=2) as sock:
                    with context.wrap_socket(sock, server_hostname="localhost"):
                        break
            except OSError:
                assert time.time() < deadline, "the SuperLink never answered over TLS"
                time.sleep(0.5)
        home = root / "operator-home"  # the coordinator's operator registers hospital-a only
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "localhost:{port}"\n'
            f'root-certificates = "{creds / "ca" / "ca.crt"}"\n')
        done = subprocess.run([_tool("flwr"), "supernode", "register",
                               str(creds / "hospitals" / "hospital-a" / "auth.pub"), "fed", "--name", "hospital-a"],
                              env={**env, "FLWR_HOME": str(home)}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        yield {"port": port, "creds": creds}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _check(superlink, hospital: str, *registered) -> tuple[int, dict]:
    keys = superlink["creds"] / "hospitals" / hospital
    code, out = _fedemo("node", "check", "--superlink", f"localhost:{superlink['port']}", "--root-certificates",
                        keys / "ca.crt", "--auth-supernode-private-key", keys / "auth.key", "--registered",
                        *registered, "--json")
    result = json.loads(out)
    return code, {step["name"]: step for step in result["steps"]}


def test_the_superlink_is_asked_whether_the_key_is_registered(superlink):
    code, steps = _check(superlink, "hospital-a")
    step = steps["registration (SuperLink)"]
    assert code == 0 and step["ok"], step
    assert "the SuperLink lists this key as node" in step["detail"] and "hospital-a" in step["detail"]


def test_a_key_in_federation_json_but_not_registered_at_the_superlink_is_not_ready(superlink):
    code, steps = _check(superlink, "hospital-b")
    step = steps["registration (SuperLink)"]
    assert code == 1 and not step["ok"], step
    assert "does not list this key" in step["detail"] and "flwr supernode register" in step["fix"]
    # The local list has it: that step passes, and says it did not ask the SuperLink.
    code, steps = _check(superlink, "hospital-b", superlink["creds"] / "federation.json")
    step = steps["registration (local list)"]
    assert step["ok"] and "only the local list was checked, not the SuperLink" in step["detail"], step
    assert "registration (SuperLink)" not in steps
