"""A hospital's first run asks before spending, and a dry run spends nothing.

A DP run calibrates its noise to spend the dataset's whole remaining budget,
so a first run on a fresh `dataset-id` spends nearly all of it, for good.
`fedemo node approve` shows the plan (rounds the node may be sampled, epsilon
per round, total) computed from the node's own data and the federation's
run config, and writes an approval only on `--yes` (or a typed yes); a node
with `approve-first=true` refuses a never-spent dataset's first spend without
it, through the real ClientApp. `fedemo node dry-run` trains the real
ClientApp on synthetic data of the node's shape and leaves the node's
state-dir untouched.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import tomllib
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from simulations.cli import main as fedemo_main

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 2
pytestmark = pytest.mark.slow  # each test loads a dataset and calibrates DP noise with the PLD accountant


def _fedemo(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = fedemo_main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> dict:
    """A walkthrough hospital (FER2013 layout) and the deployment config, shortened to ROUNDS rounds."""
    root = tmp_path_factory.mktemp("hospital")
    code, out = _fedemo("data", "synth", "fer2013", "--out", root / "data", "--n", 300, "--seed", 1)
    assert code == 0, out
    config = tomllib.loads((REPO / "configs" / "deployment_dp.toml").read_text())
    config["num-server-rounds"] = ROUNDS
    run_config = root / "run.toml"
    run_config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    return {"root": root, "data": root / "data", "run_config": run_config, "settings": config}


def _node_config(hospital, state: Path, **extra) -> dict:
    return {"data-path": str(hospital["data"]), "dataset-format": "fer2013", "dataset-id": "hospital-a-fer2013",
            "state-dir": str(state), "client-id": "hospital-a", **extra}


def _node_config_text(config: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())


def _train(hospital, node_config: dict, server_round: int = 1) -> Message:
    """One training message through the real ClientApp, as a deployed node receives it."""
    from client.client_app import app
    from shared_models import messages as msgs
    from shared_models.models.registry import build_model
    from simulations.run_config import load_run_config

    run_config, _ = load_run_config(hospital["run_config"])
    context = Context(run_id=11, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)
    content = RecordDict({msgs.ARRAYS: ArrayRecord(build_model("face_scatter").state_dict()),
                          msgs.CONFIG: ConfigRecord({msgs.SERVER_ROUND: server_round})})
    msg = Message(content=content, metadata=Metadata(
        run_id=11, message_id=f"m-{time.time_ns()}", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="", created_at=time.time(), ttl=3600.0, message_type="train"))
    return app(msg, context)


def test_a_first_run_shows_its_plan_and_approves_only_on_yes(hospital, tmp_path):
    state = tmp_path / "state"
    text = _node_config_text(_node_config(hospital, state))
    code, out = _fedemo("node", "approve", "--node-config", text, "--run-config", hospital["run_config"])
    assert code == 1 and "Not approved: nothing written" in out, out  # no terminal, no --yes: no approval
    assert "this dataset has never spent" in out and f"may be sampled in up to {ROUNDS} of them" in out
    assert "epsilon per round:" in out and "total after this run: epsilon" in out
    assert not state.exists()
    code, out = _fedemo("node", "approve", "--node-config", text, "--run-config", hospital["run_config"], "--json")
    plan = json.loads(out[:out.rindex("}") + 1])
    assert plan["planned_rounds"] == ROUNDS and len(plan["per_round"]) == ROUNDS
    assert plan["per_round"][0] > plan["per_round"][-1] > 0  # composition: later rounds add less epsilon
    assert 0.9 * plan["budget"] < plan["total"] <= plan["budget"] == hospital["settings"]["dp-epsilon"]
    code, out = _fedemo("node", "approve", "--node-config", text, "--run-config", hospital["run_config"], "--yes")
    assert code == 0 and "Approved:" in out, out
    approval = json.loads((state / "spend_approval.json").read_text())
    assert approval["dataset_id"] == "hospital-a-fer2013" and approval["approved_epsilon"] == plan["budget"]


def test_an_approve_first_node_refuses_a_first_spend_until_approved(hospital, tmp_path):
    from shared_models.privacy_ledger import LedgerError, PrivacyLedger

    state = tmp_path / "state"
    node_config = _node_config(hospital, state, **{"approve-first": True})
    with pytest.raises(LedgerError, match="has never spent privacy budget and its operator has not approved"):
        _train(hospital, node_config)
    assert not PrivacyLedger.load(state / "privacy_ledger.json").events  # nothing trained, nothing spent

    # An approval for a smaller budget than the run's does not cover it.
    state.mkdir(exist_ok=True)
    (state / "spend_approval.json").write_text(json.dumps({"dataset_id": "hospital-a-fer2013",
                                                           "approved_epsilon": 1.0}))
    with pytest.raises(LedgerError, match="operator approved 1"):
        _train(hospital, node_config)

    code, out = _fedemo("node", "approve", "--node-config", _node_config_text(node_config), "--run-config",
                        hospital["run_config"], "--yes", "--json")
    assert code == 0, out
    plan = json.loads(out[:out.rindex("}") + 1])
    reply = _train(hospital, node_config)
    from shared_models import messages as msgs

    spent = reply.content[msgs.METRICS][msgs.DP_EPSILON_SPENT]
    assert spent == pytest.approx(plan["epsilon_after_round"][0], rel=0.02)  # the plan is what the node spends
    assert len(PrivacyLedger.load(state / "privacy_ledger.json").events) == 1


def test_a_deployed_node_asks_first_by_default_and_only_an_explicit_false_spends_unasked(hospital, tmp_path):
    from shared_models.privacy_ledger import LedgerError, PrivacyLedger

    state = tmp_path / "state"
    with pytest.raises(LedgerError, match="has never spent privacy budget"):  # no approve-first key: on
        _train(hospital, _node_config(hospital, state))
    assert not PrivacyLedger.load(state / "privacy_ledger.json").events
    reply = _train(hospital, _node_config(hospital, state, **{"approve-first": False}))
    assert not reply.has_error() and len(PrivacyLedger.load(state / "privacy_ledger.json").events) == 1


def test_a_dry_run_trains_on_synthetic_data_and_leaves_the_state_dir_untouched(hospital, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "keep.txt").write_text("the node's own folder")
    text = _node_config_text(_node_config(hospital, state, **{"approve-first": True}))
    code, out = _fedemo("node", "dry-run", "--node-config", text, "--run-config", hospital["run_config"], "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["synthetic_samples"] == 300 and result["dataset_format"] == "fer2013"
    assert [r["round"] for r in result["rounds"]] == list(range(1, ROUNDS + 1))
    epsilons = [r["epsilon"] for r in result["rounds"]]
    assert 0 < epsilons[0] < epsilons[-1] <= hospital["settings"]["dp-epsilon"]
    assert "noised and accounted: DP-SGD" in result["sent"]
    assert sorted(p.name for p in state.iterdir()) == ["keep.txt"]  # no ledger, no approval, no audit
