"""A simulation across a real two-node Ray cluster (``simulation-backend = "ray"``, ``ray-address``).

Both Ray nodes run on this machine on loopback, each with one CPU and its own resources, as
``ray start --head`` and ``ray start --address`` would on two machines (docs/deployment.md "A Ray
cluster"). With ``client-num-cpus = 1`` a node holds one client actor at a time, so ten clients can only
all finish if both nodes run them; the probe ClientApp (tests/ray_probe_app.py) records which Ray node ran
each message.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(*args: str, log: Path) -> subprocess.Popen:
    """One Ray node in the foreground (``--block``), in its own process group so the test can stop it alone."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([str(RAY), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--disable-usage-stats", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def _cluster_nodes(address: str) -> list[str]:
    code = (f"import ray, json; ray.init(address={address!r}, logging_level='error');"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []


def _kill_processes_under(folder: str) -> None:
    """SIGKILL every process whose command line names ``folder`` (this cluster's Ray temp dir), and no other."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and folder.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@pytest.fixture
def two_node_cluster(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_tmp = tempfile.mkdtemp(prefix="fedemo-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    nodes = [_ray_node("--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", ray_tmp,
                       "--resources", '{"hospital_site_a": 1}', log=tmp_path / "ray-head.log")]
    try:
        deadline = time.monotonic() + 120
        while len(_cluster_nodes(address)) < 1 and time.monotonic() < deadline:
            time.sleep(2)
        nodes.append(_ray_node("--address", address, "--resources", '{"hospital_site_b": 1}',
                               log=tmp_path / "ray-worker.log"))
        while len(found := _cluster_nodes(address)) < 2 and time.monotonic() < deadline:
            time.sleep(2)
        assert len(found) == 2, (tmp_path / "ray-head.log").read_text()[-2000:]
        yield address, set(found)
    finally:
        for node in reversed(nodes):  # the worker first, then the head; --block stops what it started
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        _kill_processes_under(ray_tmp)  # what --block left behind (raylets outlive a SIGTERM), never another Ray
        # `ray start` notes the cluster for later ray.init() calls; a note left pointing at this dead cluster
        # would make every later local Ray (Flower's, another test's) try to join it
        for note in (Path(ray_tmp) / "ray_current_cluster", Path("/tmp/ray/ray_current_cluster")):
            if note.exists() and note.read_text().strip().endswith(f":{port}"):
                note.unlink()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_simulation_runs_its_clients_on_both_nodes_of_a_ray_cluster(tmp_path, two_node_cluster):
    address, cluster_nodes = two_node_cluster
    runs = tmp_path / "runs"
    overrides = {"data-dir": str(tmp_path / "fer"), "runs-dir": str(runs), "run-name": "cluster",
                 "synth-samples": 600, "num-supernodes": 10, "min-available-nodes": 10, "num-server-rounds": 2,
                 "simulation-backend": "ray", "ray-address": address, "client-num-cpus": 1.0}
    code = ("from simulations.simulate import run_simulation; import sys;"
            f"print(run_simulation({str(REPO / 'configs' / 'quickstart.toml')!r}, {overrides!r},"
            " client_app='tests.ray_probe_app:app'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])

    notes = [line.split() for f in sorted((runs / "ray-probe").glob("*.txt")) for line in f.read_text().splitlines()]
    ran_on = {ray_node for ray_node, _pid in notes}
    assert len(list((runs / "ray-probe").glob("*.txt"))) == 10  # every simulated hospital ran
    assert ran_on == cluster_nodes  # ... on both machines of the cluster, and nowhere else
    config = json.loads((run_dir / "config.json").read_text())
    assert config.get("ray-address", config.get("run_config", {}).get("ray-address")) == address
    assert (run_dir / "report.json").exists()
