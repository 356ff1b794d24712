"""`fedemo data check` and the node-config rules a deployed hospital node follows."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client.client_app import open_ledger
from client.data_check import check_data_dir
from client.node_data import client_samples
from shared_models.privacy_ledger import LedgerError
from server.server_app import prepare_data_dir
from simulations.cli import main
from simulations.run_config import load_run_config
from simulations.synthetic_data import synthesize


@pytest.fixture
def fer_folder(tmp_path):
    folder = synthesize("fer2013", tmp_path / "fer", 40, seed=5)
    csv = folder / "fer2013.csv"
    with csv.open("a") as f:
        f.write("3,1 2 3,Training\n")  # 3 pixels instead of 48 x 48: line 42
    sidecar = folder / "fer2013_demographics.csv"
    lines = sidecar.read_text().splitlines()
    sidecar.write_text("\n".join(lines[:1] + lines[3:]) + "\n")  # rows 0 and 1 lose their demographics
    return folder


def test_report_counts_and_names_what_is_wrong(fer_folder):
    report = check_data_dir(fer_folder, "fer2013")
    assert report.ready and report.task == "face"
    assert report.samples == 40 and sum(report.per_emotion.values()) == 40
    assert sum(report.per_split.values()) == 40
    assert [s["ref"] for s in report.skipped] == ["fer2013.csv:42"]
    assert "pixel" in report.skipped[0]["reason"]
    assert report.missing_demographics["sex"] == ["fer2013.csv:2", "fer2013.csv:3"]
    assert sum(report.groups["sex"].values()) == 40 and report.groups["sex"]["unknown"] == 2
    assert "ethnicity" in report.not_provided  # FER2013 publishes none


def test_cli_plain_words_json_and_exit_codes(fer_folder, tmp_path, capsys):
    assert main(["data", "check", str(fer_folder), "--format", "fer2013"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("READY") and "nothing was sent anywhere" in text
    assert "skipped fer2013.csv:42" in text and "2 of 40 samples lack sex" in text

    assert main(["data", "check", str(fer_folder), "--format", "fer2013", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"][0]["ref"] == "fer2013.csv:42"

    assert main(["data", "check", str(tmp_path / "absent"), "--format", "rafdb"]) == 2
    assert "NOT READY" in capsys.readouterr().out
    assert main(["data", "check", str(fer_folder), "--format", "cremad"]) == 2  # wrong layout, named
    assert "AudioWAV" in capsys.readouterr().out


def test_deployed_node_uses_only_its_node_config(fer_folder, tmp_path):
    _, settings = load_run_config(None, {"dp": True})
    node_config = {"data-path": str(fer_folder), "dataset-format": "fer2013", "client-id": "hospital-x"}
    # The coordinator's simulation folders are ignored: the data comes from data-path...
    samples = client_samples(settings, node_config, data_dir=str(tmp_path / "coordinator-data"))
    assert samples.client_id == "hospital-x" and len(samples.train) + len(samples.test) == 40
    # ... and the ledger from state-dir, never from the run's state-root.
    sent = ConfigRecord({"state-root": str(tmp_path / "coordinator-runs"), "data-dir": "/nowhere"})
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    with pytest.raises(LedgerError, match="state-dir"):
        open_ledger(settings, context, sent, samples)
    context.node_config["state-dir"] = str(tmp_path / "hospital-state")
    ledger = open_ledger(settings, context, sent, samples)
    assert ledger.path.parent == tmp_path / "hospital-state"
    assert not (tmp_path / "coordinator-runs").exists()


def test_coordinator_without_data_synthesises_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, settings = load_run_config(None, {"data-dir": "", "synthesize-if-missing": False})
    assert prepare_data_dir(settings) is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="needs the run's data-dir"):
        client_samples(settings, {"partition-id": 0, "num-partitions": 2}, "")
