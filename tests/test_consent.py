"""Patients' consent, record by record (issue 26): the manifest, withdrawals, what leaves the node, the report.

Real files throughout: synthetic datasets in their published layouts, real manifests (BOM, bad lines), the
real loaders, ClientApp and Flower simulations. The simulated datasets refuse every record of one label (and,
where the format has ages, one age band), so a record that slipped through would show as a count in a row
or group that must stay empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.data.consent import ConsentError, read_manifest, record_ids
from client.data.loaders.registry import every_record, load_dataset
from client.tools.data_check import check_data_dir, describe
from simulations.cli import main as fedemo
from simulations.synthetic.consent_manifest import write_consent_manifest
from simulations.synthetic.synthetic_data import synthesize

HAPPY = 3  # shared_models.taxonomy.EMOTIONS index: every format has it
TASK = {"fer2013": "face", "rafdb": "face", "cremad": "voice", "ravdess": "voice"}


def _refused(data) -> np.ndarray:
    """Every happy record, and every record of the 70+ age band: no kept record has either."""
    return (data.labels == HAPPY) | (data.demographics["age"].astype(str) == "70+")


def _dataset(tmp_path: Path, dataset: str = "rafdb", n: int = 60) -> Path:
    """A synthetic dataset whose consent.csv names every record and refuses the happy and the 70+ ones."""
    folder = tmp_path / dataset
    synthesize(dataset, folder, n, 3)
    write_consent_manifest(dataset, folder, refuse=_refused, task=TASK[dataset])
    return folder


# ----------------------------------------------------------------------------- the manifest, parsed and applied


def test_manifest_with_bom_bad_lines_duplicates_and_unknown_ids_gets_clear_errors(tmp_path):
    folder = _dataset(tmp_path, "rafdb", 40)
    ids = record_ids(every_record("rafdb", folder))
    lines = ["record,consent,form_version,date",                      # 1 (after a BOM)
             f"{ids[0]},yes,v2,2025-03-01",                           # 2
             f"{ids[1]},maybe,v2,2025-03-01",                         # 3 consent neither yes nor no
             f"{ids[2]},yes,v2,01/03/2025",                           # 4 not an ISO date
             f"{ids[3]},yes,v2",                                      # 5 a field short
             f"{ids[0]},no,v2,2025-04-01",                            # 6 listed again
             "Image/aligned/nobody_aligned.jpg,no,v2,2025-03-01",     # 7 unknown id (not a format error)
             f"{ids[4]},yes,,2025-03-01"]                             # 8 no form version
    (folder / "consent.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")

    manifest = read_manifest(folder / "consent.csv")
    assert {p.line: p.problem.split(" ")[0] for p in manifest.problems} == {
        3: "consent", 4: "date", 5: "3", 6: "record", 8: "no"}, manifest.problems
    assert "listed again (first on line 2)" in next(p.problem for p in manifest.problems if p.line == 6)
    with pytest.raises(ConsentError) as err:
        load_dataset("rafdb", folder, "face")
    assert str(err.value).startswith(f"{folder / 'consent.csv'}: malformed consent manifest, 5 bad line(s): line 3:")
    report = check_data_dir(folder, "rafdb")
    assert not report.ready and len(report.problems) == 5
    assert all(p.startswith(f"{folder / 'consent.csv'}: line ") for p in report.problems)

    # The bad lines fixed, the BOM and the unknown id kept: the header reads, the unknown id is named with its line.
    good = [lines[0], lines[1], f"{ids[1]},no,v2,2025-03-01", lines[6], f"{ids[4]},yes,v1,2025-03-01"]
    (folder / "consent.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(good).encode())
    report = check_data_dir(folder, "rafdb")
    assert report.ready, report.problems
    assert report.consent["yes"] == 2 and report.consent["no"] == 1 and report.consent["missing"] == len(ids) - 3
    assert report.consent["unknown"] == [{"line": 4, "record": "Image/aligned/nobody_aligned.jpg"}]
    assert report.samples == 2  # exclude by default: only the two named yes
    assert "consent manifest line 4: Image/aligned/nobody_aligned.jpg matches no record" in describe(report)


def test_unnamed_records_follow_consent_default_and_no_manifest_changes_nothing(tmp_path):
    folder = _dataset(tmp_path, "fer2013", 60)
    raw = every_record("fer2013", folder)
    refused = _refused(raw)
    write_consent_manifest("fer2013", folder, refuse=_refused, unnamed=lambda d: np.arange(len(d)) % 4 == 0)
    unnamed = np.arange(len(raw)) % 4 == 0
    excluded = load_dataset("fer2013", folder, "face")
    included = load_dataset("fer2013", folder, "face", consent_default="include")
    assert len(excluded) == int(np.sum(~refused & ~unnamed))
    assert len(included) == int(np.sum(~refused | unnamed))
    assert excluded.consent.applied and excluded.consent.missing == int(unnamed.sum())
    assert not np.any(excluded.labels == HAPPY)
    (folder / "consent.csv").unlink()
    everything = load_dataset("fer2013", folder, "face")
    assert len(everything) == len(raw) and not everything.consent.applied


# ----------------------------------------------------------------------------- withdrawal on a hospital's node


def _hospital(folder: Path, state: Path) -> dict:
    return {"data-path": str(folder), "dataset-format": "rafdb", "dataset-id": "hospital-a-rafdb",
            "state-dir": str(state), "client-id": "hospital-a"}


def _settings():
    from client.tools.spend_plan import run_settings

    return run_settings(None)


def test_withdrawal_is_recorded_checked_and_leaves_the_node_from_the_next_call(tmp_path, capsys):
    from client.data.consent_log import consent_wire, log_training, read_log
    from client.data.node_data import client_samples

    folder, state = _dataset(tmp_path, "rafdb", 60), tmp_path / "state"
    node = _hospital(folder, state)
    before = client_samples(_settings(), node, "")
    kept = len(before.train) + len(before.test)
    assert before.consent.excluded == int(_refused(every_record("rafdb", folder)).sum())
    assert log_training(before, "run-a", "101") and not log_training(before, "run-a", "101")  # once per Flower run
    trained = record_ids(before.train.data)[:3]

    config = " ".join(f'{k}="{v}"' for k, v in node.items())
    assert fedemo(["node", "withdraw", "--node-config", config, trained[0], "Image/aligned/nobody.jpg"]) == 2
    assert "match no record" in capsys.readouterr().err and not (state / "consent_withdrawals.jsonl").exists()
    assert fedemo(["node", "withdraw", "--node-config", config, *trained, "--date", "2026-11-30"]) == 0

    after = client_samples(_settings(), node, "")
    assert len(after.train) + len(after.test) == kept - 3
    assert not set(trained) & set(record_ids(after.train.data) + record_ids(after.test.data))
    assert after.consent.withdrawn == 3 and after.consent.excluded == before.consent.excluded + 3
    log_training(after, "run-b", "202")
    metrics, client = consent_wire(after, "run-b", "202")
    assert metrics == {"consent-used": len(after.train), "consent-excluded": after.consent.excluded,
                       "consent-withdrawn": 3, "consent-withdrawn-new": 3, "consent-tracked": 1,
                       "consent-runs-on-withdrawn": 1, "consent-this-run-on-withdrawn": 0}
    assert client == {"consent-sha256": before.consent.manifest_sha256, "consent-policy": "exclude"}
    assert fedemo(["node", "withdraw", "--node-config", config, trained[0]]) == 0  # already: names the runs
    assert "Runs that trained on records withdrawn so far" in capsys.readouterr().out
    assert all(trained[0] not in json.dumps(v) for v in (metrics, client))  # record ids never leave
    assert [e["run"] for e in read_log(state)] == ["run-a", "run-b"]

    # The hospital edits its manifest (one more refusal): the next message reads it again.
    refuse = record_ids(after.train.data)[0]
    manifest = folder / "consent.csv"
    manifest.write_text(manifest.read_text().replace(f"{refuse},yes,", f"{refuse},no,"))
    edited = client_samples(_settings(), node, "")
    assert len(edited.train) == len(after.train) - 1 and refuse not in record_ids(edited.train.data)


def test_dp_allowlist_lets_consent_counts_through_and_nothing_else_new():
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from client.privacy.dp_allowlist import disallowed_content
    from shared_models import messages as msgs

    content = RecordDict({msgs.METRICS: MetricRecord({msgs.NUM_EXAMPLES: 5, **{k: 1 for k in msgs.CONSENT_METRICS}}),
                          msgs.CLIENT: ConfigRecord({msgs.CLIENT_ID: "a", msgs.CONSENT_MANIFEST: "ab",
                                                     msgs.CONSENT_POLICY: "exclude"})})
    assert disallowed_content(content, "train", eval_counts_noised=True) == []
    content[msgs.CLIENT]["consent-record-ids"] = "x"
    assert disallowed_content(content, "train", eval_counts_noised=True) == ["client.consent-record-ids"]


# ----------------------------------------------------------------------------- real simulations


def _simulate(tmp_path: Path, dataset: str, folder: Path, name: str, *, resume: Path | None = None, **extra) -> Path:
    from simulations.simulate import run_simulation

    if resume is not None:
        return run_simulation(None, extra, resume=resume)
    voice = TASK[dataset] == "voice"
    return run_simulation(None, {
        "task": TASK[dataset], "dataset": dataset, "model": "voice_stats" if voice else "face_cnn",
        "data-dir": str(folder), "runs-dir": str(tmp_path / "runs"), "run-name": name, "synth-samples": 10,
        "num-supernodes": 2, "min-available-nodes": 2, "num-server-rounds": 1, "batch-size": 16, "local-epochs": 1,
        "min-partition-size": 2, "state-dir": str(tmp_path / "state"), **extra})


def _rounds(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["fer2013", "rafdb", "cremad", "ravdess"])
def test_simulation_never_touches_a_refused_record(tmp_path, dataset):
    folder = _dataset(tmp_path, dataset, 160 if TASK[dataset] == "face" else 90)
    raw = every_record(dataset, folder, TASK[dataset])
    refused = _refused(raw)
    assert refused.any() and (~refused).any()
    run = _simulate(tmp_path, dataset, folder, "consent")
    rounds = _rounds(run)
    for entry in rounds:
        assert not any(entry["confusion"]["counts"][HAPPY]), f"round {entry['round']}: a happy record was evaluated"
        assert not np.any(np.asarray(entry.get("groups", {}).get("age", {}).get("70+", 0)))
    train = rounds[-1]["train"]["clients"]
    tested = sum(c["num_examples"] for c in rounds[0]["evaluate"]["clients"])
    # The model was trained on consented records only: the training sets and test sets hold exactly them.
    assert sum(c["num_examples"] for c in train) + tested == int(np.sum(~refused))
    manifest = read_manifest(folder / "consent.csv").sha256
    for c in train:
        assert c["consent"]["used"] == c["num_examples"] and c["consent"]["manifest"] == manifest
        assert c["consent"]["excluded"] == 0  # a simulated node's own rows: the folder's refusals are the folder's
    report = json.loads((run / "report.json").read_text())["consent"]
    assert report["any_manifest"] and [c["manifest"] for c in report["clients"]] == [manifest] * 2


@pytest.mark.slow
def test_withdrawal_between_runs_changes_the_second_runs_counts_and_resume_keeps_it(tmp_path):
    from client.data.consent_log import read_log, record_digest
    from client.data.node_data import folder_dataset_id

    folder = _dataset(tmp_path, "fer2013", 160)
    first = _rounds(_simulate(tmp_path, "fer2013", folder, "first"))
    kept = every_record("fer2013", folder).subset(np.flatnonzero(~_refused(every_record("fer2013", folder))))
    withdrawn = record_ids(kept)[:6]
    assert fedemo(["node", "withdraw", "--state-dir", str(tmp_path / "state"), "--data-path", str(folder),
                   "--format", "fer2013", *withdrawn]) == 0
    assert json.loads((tmp_path / "state" / "consent_withdrawals.jsonl").read_text().splitlines()[0])[
        "dataset_id"] == folder_dataset_id("fer2013", folder)

    second_run = _simulate(tmp_path, "fer2013", folder, "second")
    second = _rounds(second_run)
    held = lambda rounds: (sum(c["num_examples"] for c in rounds[-1]["train"]["clients"])  # noqa: E731
                           + sum(c["num_examples"] for c in rounds[0]["evaluate"]["clients"]))
    assert held(second) == held(first) - 6
    consent = {c["client"]: c["consent"] for c in second[-1]["train"]["clients"]}
    assert sum(c["withdrawn"] for c in consent.values()) == 6
    assert all(c["withdrawn_new"] == 6 for c in consent.values())  # recorded since each node's previous run
    digests = {record_digest(r) for r in withdrawn}
    trained_on = {cid for cid in consent
                  if digests & set(read_log(tmp_path / "state" / f"client-{cid}")[0]["trained"])}
    assert trained_on and {cid for cid, c in consent.items() if c["runs_on_withdrawn"] == 1} == trained_on
    assert not any(c["this_run_on_withdrawn"] for c in consent.values())

    # Resume the first run across the withdrawal: its next round leaves the records out, and says what it started from.
    resumed_run = _simulate(tmp_path, "fer2013", folder, "", resume=tmp_path / "runs" / "first",
                            **{"num-server-rounds": 2})
    resumed = _rounds(resumed_run)
    assert [r["round"] for r in resumed] == [0, 1, 2]
    assert sum(c["num_examples"] for c in resumed[2]["train"]["clients"]) \
        == sum(c["num_examples"] for c in second[-1]["train"]["clients"])
    report = json.loads((resumed_run / "report.json").read_text())["consent"]
    started = {c["client"] for c in report["clients"] if c["started_from_withdrawn"]}
    assert started == trained_on and report["remedy"]
    assert "this run started from such a model" in (resumed_run / "report.html").read_text()

    # Every round's checkpoint is kept: roll the run back to round 1 and train round 2 again from there.
    assert sorted(p.name for p in (resumed_run / "checkpoints").iterdir()) == ["round-0001.npz", "round-0002.npz"]
    assert fedemo(["simulate", "--resume", str(resumed_run), "--from-round", "1"]) == 0
    again = _rounds(resumed_run)
    assert [r["round"] for r in again] == [0, 1, 2] and again[1] == resumed[1]
    assert sum(c["num_examples"] for c in again[2]["train"]["clients"]) \
        == sum(c["num_examples"] for c in second[-1]["train"]["clients"])


def test_a_run_rolls_back_only_to_a_round_whose_checkpoint_it_kept(tmp_path, capsys):
    from flwr.app import Array, ArrayRecord

    from server.record.checkpoint import Checkpoint

    run = tmp_path / "run"
    run.mkdir()
    for server_round in (1, 2):
        Checkpoint(server_round, ArrayRecord({"w": Array(np.full(3, float(server_round), np.float32))})).save(run)
    assert Checkpoint.load(run).server_round == 2
    assert fedemo(["simulate", "--resume", str(run), "--from-round", "5"]) == 2
    assert "kept no checkpoint of round 5 (kept: 1, 2)" in capsys.readouterr().err
    assert fedemo(["simulate", "--from-round", "1"]) == 2
    from server.record.checkpoint import roll_back

    roll_back(run, 1)
    back = Checkpoint.load(run)
    assert back.server_round == 1 and back.arrays["w"].numpy().tolist() == [1.0, 1.0, 1.0]


def test_the_report_says_when_no_manifest_was_applied_and_which_runs_need_retraining():
    from server.report.consent_section import consent_html, consent_section

    def train(client: str, manifest: str, runs: int, this_run: bool = False) -> dict:
        return {"client": client, "num_examples": 9, "consent": {
            "manifest": manifest, "policy": "exclude", "tracked": True, "used": 9, "excluded": 2, "withdrawn": 1,
            "withdrawn_new": 1, "runs_on_withdrawn": runs, "this_run_on_withdrawn": this_run}}

    rounds = [{"round": 0}, {"round": 1, "train": {"clients": [train("a", "", 0), train("b", "", 0)]}}]
    page = consent_html({"consent": consent_section({}, rounds, "now")})
    assert "No consent manifest was applied" in page and "consent was since withdrawn" not in page

    rounds[1]["train"]["clients"] = [train("a", "ab" * 32, 2, this_run=True), train("b", "", 0)]
    fresh = consent_section({}, rounds, "now")
    resumed = consent_section({"resumed_parts": [{"flower_run_id": 2}]}, rounds, "now")
    assert fresh["hospitals_with_runs_on_withdrawn"] == ["a"] and fresh["remedy"]
    assert [c["started_from_withdrawn"] for c in fresh["clients"]] == [False, False]
    assert [c["started_from_withdrawn"] for c in resumed["clients"]] == [True, False]
    page = consent_html({"consent": resumed})
    assert "No consent manifest was applied" not in page and "this run started from such a model" in page
    assert "consent was since withdrawn" in page and "--from-round" in page


def test_a_template_names_every_record_as_the_node_reads_it(tmp_path):
    folder = tmp_path / "fer2013"
    synthesize("fer2013", folder, 40, 5)
    template = tmp_path / "template.csv"
    assert fedemo(["data", "check", str(folder), "--format", "fer2013", "--consent-template", str(template)]) == 0
    lines = template.read_text().splitlines()
    assert lines[0] == "record,consent,form_version,date" and all(line.endswith(",,,") for line in lines[1:])
    # The hospital fills it in: the first record refused, every other one consented.
    filled = [lines[0]] + [line.replace(",,,", f",{'no' if i == 0 else 'yes'},v1,2026-01-0{1 + i % 9}")
                           for i, line in enumerate(lines[1:])]
    (folder / "consent.csv").write_text("\n".join(filled) + "\n")
    data = load_dataset("fer2013", folder, "face")
    assert data.consent.missing == 0 and data.consent.refused == 1 and len(data) == 39
    assert fedemo(["data", "check", str(folder), "--format", "fer2013", "--consent-template", str(template)]) == 2


@pytest.mark.slow
def test_a_dp_hospital_node_trains_on_consented_records_and_its_audit_holds_no_record_id(tmp_path):
    """The real ClientApp, as a SuperNode runs it: DP-SGD on a hospital folder with a manifest and a withdrawal."""
    import time

    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

    from client.client_app import app
    from shared_models import messages as msgs
    from shared_models.models.registry import build_model
    from simulations.run_config import load_run_config

    folder, state = _dataset(tmp_path, "rafdb", 80), tmp_path / "state"
    raw = every_record("rafdb", folder)
    withdrawn = next(r for r, refused in zip(record_ids(raw), _refused(raw)) if not refused)
    assert fedemo(["node", "withdraw", "--state-dir", str(state), "--dataset-id", "hospital-a-rafdb", withdrawn]) == 0
    run_config, settings = load_run_config(None, {"dataset": "rafdb", "dp": True, "batch-size": 16,
                                                  "num-server-rounds": 1})
    node = {**_hospital(folder, state), "approve-first": False}
    context = Context(run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config=run_config)
    content = RecordDict({msgs.ARRAYS: ArrayRecord(build_model(settings.model).state_dict()),
                          msgs.CONFIG: ConfigRecord({msgs.SERVER_ROUND: 1})})
    reply = app(Message(content=content, metadata=Metadata(
        run_id=7, message_id=f"m-{time.time_ns()}", src_node_id=1, dst_node_id=0, reply_to_message_id="",
        group_id="", created_at=time.time(), ttl=3600.0, message_type="train")), context)
    assert not reply.has_error(), reply.error
    metrics, client = reply.content[msgs.METRICS], reply.content[msgs.CLIENT]
    assert metrics[msgs.CONSENT_EXCLUDED] == int(_refused(raw).sum()) + 1 and metrics[msgs.CONSENT_WITHDRAWN] == 1
    assert metrics[msgs.CONSENT_USED] == metrics[msgs.NUM_EXAMPLES] > 0 and msgs.DP_EPSILON_SPENT in metrics
    assert client[msgs.CONSENT_MANIFEST] == read_manifest(folder / "consent.csv").sha256
    audit = (state / "outgoing_messages.jsonl").read_text()
    assert msgs.CONSENT_EXCLUDED in audit and withdrawn not in audit
