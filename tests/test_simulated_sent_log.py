"""`fedemo node sent` can be tried in a simulation: `node-sent-log = true` makes simulated nodes write the audit.

A hospital's privacy officer should see what `fedemo node sent` tells before
any node is deployed. A real simulation (two DP nodes, one round) with the
key on writes each simulated node's outgoing-message audit beside its ledger
in the run folder's node-state, and `fedemo node sent` reads it there; with
the key off (the default) a simulated node has no audit path.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from simulations.cli import main as fedemo_main
from simulations.simulate import run_simulation

TINY_DP = {"num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1, "synth-samples": 400,
           "model": "face_scatter", "optimizer": "sgd", "learning-rate": 1.0, "momentum": 0.0, "batch-size": 32,
           "dp": True, "eval-dp-noise-multiplier": 1.0, "partitioner": "iid"}


def _fedemo(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fedemo_main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.mark.slow
def test_simulated_nodes_write_the_outgoing_log_that_node_sent_reads(tmp_path):
    run_dir = run_simulation(None, {**TINY_DP, "data-dir": str(tmp_path / "faces"), "runs-dir": str(tmp_path / "runs"),
                                    "run-name": "sent-log", "node-sent-log": True})
    for node in ("client-0", "client-1"):
        state = run_dir / "node-state" / node
        replies = [json.loads(line) for line in (state / "outgoing_messages.jsonl").read_text().splitlines()]
        # the initial evaluation, one training round and its evaluation: every reply the coordinator got
        assert [r["message_type"] for r in replies] == ["evaluate", "train", "evaluate"], replies
        assert all(r["error"] is None for r in replies)
        code, output = _fedemo("node", "sent", state)
        assert code == 0, output
        assert "Run sent-log (Flower run " in output  # named by its run folder, from the ledger beside it
        assert output.count("noised and accounted: DP-SGD") == 1, output

    # Off by default (pyproject.toml): the same simulated node, without the key, has no audit path.
    import tomllib
    from pathlib import Path

    from flwr.app import ConfigRecord, Context, RecordDict

    from client.tools.outgoing_audit import audit_path

    defaults = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    run_config = defaults["tool"]["flwr"]["app"]["config"]
    assert run_config["node-sent-log"] is False
    node = {"partition-id": 0, "num-partitions": 2}
    config = ConfigRecord({"state-root": str(run_dir / "node-state")})
    assert audit_path(Context(1, 1, node, RecordDict(), run_config), config) is None
    assert audit_path(Context(1, 1, node, RecordDict(), {**run_config, "node-sent-log": True}), config) == \
        run_dir / "node-state" / "client-0" / "outgoing_messages.jsonl"
