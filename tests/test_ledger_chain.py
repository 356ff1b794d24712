"""The coordinator keeps each node's ledger chain head, and a shortened or replaced ledger is caught.

A small DP federation is driven the way the coordinator drives it, without
the Flower engine: the real ClientApp answers real train and evaluate
Messages (two hospitals, a shared ``state-dir``, an earlier run on the same
data), the real RoundRecorder writes metrics.jsonl, and ``fedemo report
--build`` / ``fedemo verify`` build, sign and check the report. Then a
hospital's ledger is tampered with the ways issue 19 names (events deleted,
with and without re-hashing the chain; the ledger and node.json deleted; a
fresh ledger in their place; events cut off the end of a ledger the
coordinator cannot see), and the check must say so.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.client_app import app
from server.report.build import build_report
from server.record.round_recorder import RoundRecorder
from server.record.run_record import RunRecord
from shared_models import messages as msgs
from shared_models.privacy_ledger import LEDGER_FILE, NODE_FILE, LedgerError, PrivacyLedger
from shared_models.models.registry import build_model
from simulations.cli import main as fedemo
from simulations.run_config import load_run_config
from simulations.synthetic.synthetic_data import synthesize

EARLIER_RUN, RUN = 6, 7  # Flower run ids: an earlier run on the same data, then the run the report covers
ROUNDS, NODES = 2, 2


class Federation:
    """Two simulated hospitals answering through the real ClientApp; the coordinator's real recorder."""

    def __init__(self, root: Path):
        self.root = root
        synthesize("fer2013", root / "fer", 240, 0)
        self.run_config, self.settings = load_run_config(None, {
            "data-dir": str(root / "fer"), "num-supernodes": NODES, "partitioner": "iid", "client-threads": 1,
            "dp": True, "dp-epsilon": 30.0, "eval-dp-noise-multiplier": 5.0, "state-dir": str(root / "state"),
            "num-server-rounds": ROUNDS, "runs-dir": str(root / "runs"), "run-name": "chain",
            "fairness-min-group-size": 8})
        self.arrays = ArrayRecord(build_model(self.settings.model).state_dict())

    def ask(self, partition: int, kind: str, server_round: int, run_id: int) -> Message:
        context = Context(run_id=run_id, node_id=partition + 1,
                          node_config={"partition-id": partition, "num-partitions": NODES},
                          state=RecordDict(), run_config=dict(self.run_config))
        content = RecordDict({msgs.ARRAYS: self.arrays, msgs.CONFIG: ConfigRecord(
            {msgs.SERVER_ROUND: server_round, msgs.DATA_DIR: self.settings.data_dir})})
        reply = app(message=Message(content, dst_node_id=partition + 1, message_type=kind), context=context)
        assert not reply.has_error(), reply.error
        return reply

    def run(self) -> tuple[Path, dict]:
        """The earlier run (one round, not recorded here), then the recorded run; returns its folder and replies."""
        for partition in range(NODES):
            self.ask(partition, MessageType.TRAIN, 1, EARLIER_RUN)
        record = RunRecord.create(self.root / "runs", "chain", self.run_config,
                                  {"flower_run_id": RUN, "data_dir": self.settings.data_dir})
        recorder = RoundRecorder(record, ROUNDS)
        replies: dict = {"train": {}, "evaluate": {}}
        recorder.evaluation_replies(0, [self.ask(p, MessageType.EVALUATE, 0, RUN) for p in range(NODES)])
        for server_round in range(1, ROUNDS + 1):
            train = [self.ask(p, MessageType.TRAIN, server_round, RUN) for p in range(NODES)]
            recorder.train_replies(server_round, train, [])
            evaluate = [self.ask(p, MessageType.EVALUATE, server_round, RUN) for p in range(NODES)]
            recorder.evaluation_replies(server_round, evaluate)
            for reply in train:
                replies["train"][(str(reply.content[msgs.CLIENT][msgs.CLIENT_ID]), server_round)] = reply
            for reply in evaluate:
                replies["evaluate"][(str(reply.content[msgs.CLIENT][msgs.CLIENT_ID]), server_round)] = reply
        record.write_json("summary.json", recorder.summary())
        assert fedemo(["report", "--build", str(record.run_dir)]) == 0
        return record.run_dir, replies

    def ledger(self, client_id: str) -> Path:
        return self.root / "state" / f"client-{client_id}" / LEDGER_FILE


@pytest.fixture
def federation(tmp_path, task_identity) -> tuple[Federation, Path, dict]:
    fed = Federation(tmp_path)
    run_dir, replies = fed.run()
    return fed, run_dir, replies


def rebuilt_check(run_dir: Path) -> dict:
    return build_report(run_dir)["privacy"]["ledger_check"]


def verify(run_dir: Path, capsys, *extra: str) -> tuple[int, str]:
    code = fedemo(["verify", str(run_dir), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def rewrite(path: Path, keep) -> None:
    """Drop the ledger events ``keep`` refuses, as an editor would (the file otherwise as it was)."""
    raw = json.loads(path.read_text())
    raw["events"] = [e for e in raw["events"] if keep(e)]
    path.write_text(json.dumps(raw))


def rehash(path: Path) -> None:
    """Recompute the chain over the events as they now stand: what a tamperer who read the code would do."""
    from shared_models.privacy_ledger import DPEvent, event_hash, genesis_hash

    raw = json.loads(path.read_text())
    prev, events = genesis_hash(raw["dataset_id"]), []
    for e in raw["events"]:
        event = replace(DPEvent(**e), prev=prev)
        events.append(asdict(event))
        prev = event_hash(event)
    raw["events"] = events
    path.write_text(json.dumps(raw))


@pytest.mark.slow  # over 5 s on 2 quiet cores (per-test CPU time measured under load)
def test_the_report_lists_every_head_the_nodes_sent_and_untouched_ledgers_hold_them(federation, capsys):
    fed, run_dir, replies = federation
    report = json.loads((run_dir / "report.json").read_text())
    privacy = report["privacy"]
    assert privacy["ledger_check"]["ok"] and privacy["ledger_check"]["status"] == f"all {NODES} ledgers match"
    for client in privacy["clients"]:
        heads = {(h["round"], h["after"]): h["head"] for h in client["ledger_heads"]}
        for (client_id, server_round), reply in replies["train"].items():
            if client_id == client["client_id"]:
                assert heads[(server_round, "train")] == reply.content[msgs.CLIENT][msgs.DP_LEDGER_HEAD]
        assert {r for r, after in heads if after == "evaluation"} == set(range(ROUNDS + 1))
        chain = next(c for c in privacy["ledger_check"]["clients"] if c["client_id"] == client["client_id"])["chain"]
        assert chain["ok"] and chain["heads_recorded"] == len(heads) == 2 * ROUNDS + 1
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(len(c["dp"]["ledger_head"]) == 64 for m in metrics[1:] for c in m["train"]["clients"])
    code, out = verify(run_dir, capsys, "--ledger", f"0={fed.ledger('0')}")
    assert code == 0 and "holds every head the report recorded" in out and out.rstrip().splitlines()[-1].startswith(
        "valid")


@pytest.mark.slow  # over 5 s on 2 quiet cores (per-test CPU time measured under load)
def test_deleted_events_of_an_earlier_run_are_caught_with_or_without_rehashing(federation, capsys):
    fed, run_dir, _ = federation
    path = fed.ledger("0")
    backup = path.read_bytes()
    # Deleted by hand: the run under report keeps all its events, so a check of this run's figures alone passes.
    rewrite(path, lambda e: e["run"] != str(EARLIER_RUN))
    check = rebuilt_check(run_dir)
    assert not check["ok"], check["status"]
    client = next(c for c in check["clients"] if c["client_id"] == "0")
    assert client["status"] == "unreadable" and "hash chain breaks" in client["detail"]
    # Re-hashed into a consistent, shorter chain: it loads, and matches this run's figures, but lacks the heads.
    rehash(path)
    assert PrivacyLedger.load(path).events  # a valid ledger now
    check = rebuilt_check(run_dir)
    client = next(c for c in check["clients"] if c["client_id"] == "0")
    assert not check["ok"] and check["chain_broken"] == 1 and client["status"] == "mismatch"
    assert client["chain"]["missing_rounds"] == list(range(ROUNDS + 1))
    assert "no longer hold the chain heads" in check["status"]
    other = next(c for c in check["clients"] if c["client_id"] == "1")
    assert other["status"] == "match" and other["chain"]["ok"]
    # A report signed with that check is signed, and still not called valid.
    assert fedemo(["report", "--build", str(run_dir)]) == 0
    code, out = verify(run_dir, capsys)
    assert code == 4 and "PRIVACY LEDGER CHECK FAILED" in out and "client 0: mismatch" in out
    path.write_bytes(backup)
    assert rebuilt_check(run_dir)["ok"]


@pytest.mark.slow  # over 5 s on 2 quiet cores (per-test CPU time measured under load)
def test_a_deleted_ledger_and_a_fresh_one_in_its_place_are_caught(federation):
    fed, run_dir, _ = federation
    state = fed.ledger("1").parent
    (state / LEDGER_FILE).unlink()
    (state / NODE_FILE).unlink()  # what gives the data a fresh budget: the node cannot tell a first start
    check = rebuilt_check(run_dir)
    client = next(c for c in check["clients"] if c["client_id"] == "1")
    assert not check["ok"] and client["status"] == "missing", check  # not "not available": the coordinator sees it
    fed.ask(1, MessageType.TRAIN, 1, RUN + 1)  # the node starts afresh in the next run
    assert len(PrivacyLedger.load(state / LEDGER_FILE).events) == 1
    check = rebuilt_check(run_dir)
    client = next(c for c in check["clients"] if c["client_id"] == "1")
    assert not check["ok"] and not client["chain"]["ok"] and client["chain"]["status"] == "heads missing"


@pytest.mark.slow  # over 5 s on 2 quiet cores (per-test CPU time measured under load)
def test_verify_checks_a_ledger_the_coordinator_never_saw(federation, tmp_path, capsys):
    fed, run_dir, _ = federation
    # Deployed: the ledgers stay at the hospitals; the report can only list the heads it recorded.
    hospital = tmp_path / "hospital-0"
    shutil.move(str(fed.root / "state"), str(tmp_path / "elsewhere"))
    shutil.copytree(tmp_path / "elsewhere" / "client-0", hospital)
    assert fedemo(["report", "--build", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["privacy"]["ledger_check"]["status"].startswith("not available")
    assert verify(run_dir, capsys, "--ledger", f"0={hospital / LEDGER_FILE}")[0] == 0

    # The hospital cuts its last round off the end: the chain stays valid, but lacks the reported heads.
    ledger = PrivacyLedger.load(hospital / LEDGER_FILE)
    cut = next(i for i, e in enumerate(ledger.events) if e.run == str(RUN) and e.round == ROUNDS)
    raw = json.loads((hospital / LEDGER_FILE).read_text())
    raw["events"] = raw["events"][:cut]
    (hospital / LEDGER_FILE).write_text(json.dumps(raw))
    PrivacyLedger.load(hospital / LEDGER_FILE)  # loads: cutting the end keeps the chain
    code, out = verify(run_dir, capsys, "--ledger", f"0={hospital / LEDGER_FILE}")
    assert code == 4 and "heads missing" in out and f"round(s) {ROUNDS}" in out
    code, out = verify(run_dir, capsys, "--ledger", f"9={hospital / LEDGER_FILE}")
    assert code == 2 and "no DP-SGD client '9'" in out
    with pytest.raises(LedgerError):  # and a ledger edited in the middle does not load at all
        rewrite(hospital / LEDGER_FILE, lambda e: e["round"] != 1)
        PrivacyLedger.load(hospital / LEDGER_FILE)
    code, out = verify(run_dir, capsys, "--ledger", f"0={hospital / LEDGER_FILE}")
    assert code == 4 and "unreadable" in out


def test_the_report_states_the_adjacency_of_each_epsilon_shows_both_and_the_timing_channel(federation):
    fed, run_dir, replies = federation
    report = json.loads((run_dir / "report.json").read_text())
    privacy = report["privacy"]
    mechanisms = {m["protects"]: m for m in privacy["guarantees"]["mechanisms"]}
    training = mechanisms["each training record of each hospital"]
    assert training["adjacency"].startswith("replace one training record") and "PLD" in training["adjacency"]
    assert "add or remove" not in training["adjacency"]
    counts = mechanisms["each test record of each hospital"]
    assert counts["adjacency"].startswith("add or remove one test record")
    assert "separate from training" in counts["epsilon"] and "larger of the two" in counts["epsilon"]
    assert "at their sum" in counts["epsilon"]
    # Both epsilons per hospital, as the nodes sent them: training from train replies, counts from evaluate replies.
    for client in privacy["clients"]:
        last_train = replies["train"][(client["client_id"], ROUNDS)].content[msgs.METRICS]
        last_eval = replies["evaluate"][(client["client_id"], ROUNDS)].content[msgs.METRICS]
        assert client["epsilon"] == last_train[msgs.DP_EPSILON_SPENT]
        assert client["eval_epsilon"] == last_eval[msgs.GROUP_DP_EPSILON_SPENT]
        assert client["epsilon"] != client["eval_epsilon"]  # two accounts, not one composed figure
    assert privacy["max_eval_epsilon"] == max(c["eval_epsilon"] for c in privacy["clients"])
    timing = privacy["guarantees"]["side_channels"][0]
    assert "duration" in timing["channel"] and "R^2 0.60" in timing["reveals"]
    assert "fixed" in timing["would_remove_it"] and timing["why_not_removed"].startswith("cost")
    page = (run_dir / "report.html").read_text()
    for text in ("training epsilon (largest)", "evaluation-count epsilon (largest)", "replace one training record",
                 "R^2 0.60", "evaluation-count epsilon</th>"):
        assert text in page, text
    docs = (Path(__file__).parents[1] / "docs" / "privacy.md").read_text()
    threat_model = docs.split("## Sample-level")[0]
    assert "**replace** one training record" in threat_model and "R^2 0.60" in threat_model
    assert "permutation-based split" not in docs  # the old reason to compose evaluation counts with training
