"""`fedemo data check` and the node-config rules a deployed hospital node follows."""

from __future__ import annotations

import json
import re

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client.client_app import open_ledger
from client.tools.data_check import check_data_dir
from client.data.node_data import client_samples
from shared_models.privacy_ledger import LedgerError
from server.server_app import dataset_folder
from simulations.cli import main
from simulations.run_config import load_run_config
from simulations.synthetic.synthetic_data import synthesize


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
    node_config = {"data-path": str(fer_folder), "dataset-format": "fer2013", "client-id": "hospital-x",
                   "approve-first": False}  # not about the operator's approval (tests/test_spend_approval.py)
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
    assert dataset_folder(settings) is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="needs the run's data-dir"):
        client_samples(settings, {"partition-id": 0, "num-partitions": 2}, "")


# ---------------------------------------------------------------------------
# Issue 20: READY means a simulation's nodes can start; what it catches stops before the engine
# ---------------------------------------------------------------------------


def _five_row_fer(folder):
    """A 5-row FER2013 CSV (the real synthesiser's rows, cut short)."""
    synthesize("fer2013", folder, 40, seed=3)
    csv = folder / "fer2013.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:6]))
    (folder / "fer2013_demographics.csv").unlink()
    return folder


def _all_nan_cremad(folder):
    import numpy as np
    import soundfile as sf

    (folder / "AudioWAV").mkdir(parents=True)
    for stem in ("1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_TIE_SAD_LO", "1002_IOM_NEU_XX"):
        sf.write(str(folder / "AudioWAV" / f"{stem}.wav"), np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    (folder / "VideoDemographics.csv").write_text('"ActorID","Age","Sex","Race","Ethnicity"\n'
                                                  "1001,51,Male,Caucasian,Not Hispanic\n1002,21,Female,Asian,Hispanic\n")
    return folder


def _non_utf8_fer(tmp_path):
    """A valid FER2013 copy in a folder whose name holds the byte 0xE9 (Latin-1 'é', not UTF-8)."""
    import os
    from pathlib import Path

    good = synthesize("fer2013", tmp_path / "cafe", 40, seed=4)
    target = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    os.rename(os.fsencode(str(good)), target)
    return Path(os.fsdecode(target))


def test_ready_accounts_for_min_partition_size_times_nodes(tmp_path, capsys):
    from client.data.partitioning import PartitionSpec

    folder = _five_row_fer(tmp_path / "five")
    assert check_data_dir(folder, "fer2013").ready  # a hospital's own node can train and test on 5 rows
    report = check_data_dir(folder, "fer2013", partition_spec=PartitionSpec(num_partitions=2, min_size=10))
    assert not report.ready
    assert report.problems == [f"{folder}: 5 usable sample(s), fewer than the 20 that 2 node(s) x min-partition-size "
                               "10 need; use fewer nodes, a smaller min-partition-size or more data"]
    assert check_data_dir(folder, "fer2013", partition_spec=PartitionSpec(num_partitions=2, min_size=2)).ready
    # a split the partitioner cannot make (natural: FER2013 without the sidecar has no subjects) is not ready either
    natural = check_data_dir(folder, "fer2013", partition_spec=PartitionSpec("natural", num_partitions=2, min_size=2))
    assert not natural.ready and "natural partitioning needs a subject" in natural.problems[0]

    assert main(["data", "check", str(folder), "--format", "fer2013", "--nodes", "2"]) == 2
    assert "NOT READY" in capsys.readouterr().out
    assert main(["data", "check", str(folder), "--format", "fer2013", "--nodes", "2", "--min-partition-size", "2"]) == 0


@pytest.mark.parametrize("case", ["five-rows-ten-nodes", "all-nan-clips", "non-utf8-folder"])
def test_a_simulation_refuses_its_data_before_the_engine_starts(tmp_path, case):
    """``prepare_data`` (what `fedemo simulate` and `baseline` run first) refuses in one printable line."""
    from shared_models.dataset_format_error import DatasetFormatError
    from simulations.synthetic.data_prep import prepare_data

    overrides = {"five-rows-ten-nodes": {"data-dir": str(_five_row_fer(tmp_path / "five"))},
                 "all-nan-clips": {"data-dir": str(_all_nan_cremad(tmp_path / "nan")), "dataset": "cremad",
                                   "task": "voice", "model": "voice_crnn", "num-supernodes": 2, "min-partition-size": 2},
                 "non-utf8-folder": {"data-dir": str(_non_utf8_fer(tmp_path)), "num-supernodes": 2,
                                     "min-partition-size": 2}}[case]
    _, settings = load_run_config(None, {**overrides, "runs-dir": str(tmp_path / "runs")})
    with pytest.raises(DatasetFormatError) as err:
        prepare_data(settings)
    message = str(err.value)
    message.encode("utf-8")  # printable: a non-UTF-8 name is shown with \x escapes, never as lone surrogates
    assert "\n" not in message
    expected = {"five-rows-ten-nodes": r"5 usable sample\(s\), fewer than the 100 that 10 node\(s\) x "
                                       r"min-partition-size 10 need",
                "all-nan-clips": r"no clip can be decoded \(4 of 4 indexed clips failed.*NaN",
                "non-utf8-folder": r"caf\\xe9: data-dir: the path is not valid UTF-8"}[case]
    assert re.search(expected, message), message


def test_constant_faces_are_counted_in_the_check_and_in_the_runs_log(tmp_path, caplog):
    """300 all-black faces are kept (they are not malformed) but counted, in data check and in the run's log."""
    import logging

    from simulations.synthetic.data_prep import prepare_data

    folder = synthesize("fer2013", tmp_path / "fer", 40, seed=6)
    black = " ".join(["0"] * 48 * 48)
    with (folder / "fer2013.csv").open("a") as f:
        f.writelines(f"3,{black},Training\n" for _ in range(300))
    report = check_data_dir(folder, "fer2013")
    assert report.ready and len(report.flagged["constant image"]) == 300
    assert any(w.startswith("constant image: 300 kept but suspect") for w in report.warnings)
    _, settings = load_run_config(None, {"data-dir": str(folder), "num-supernodes": 2, "runs-dir": str(tmp_path / "r")})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        assert prepare_data(settings) == folder
    assert any(re.search(r"constant image: 300 in .* kept but flagged", r.getMessage()) for r in caplog.records)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["all-nan-clips", "five-rows", "non-utf8-folder"])
def test_fedemo_simulate_stops_on_such_data_in_one_line_without_a_traceback(tmp_path, case):
    """Through the real CLI: exit 2, one line naming the folder, no Flower ERROR/Traceback (the engine never starts).

    Old code printed four Flower tracebacks for the all-NaN folder, failed the 5-row CSV inside the engine, and
    trained on the non-UTF-8 folder, exited 0 and wrote no report."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = {"all-nan-clips": lambda: _all_nan_cremad(tmp_path / "nan"),
              "five-rows": lambda: _five_row_fer(tmp_path / "five"),
              "non-utf8-folder": lambda: _non_utf8_fer(tmp_path)}[case]()
    sets = {"all-nan-clips": ["dataset=cremad", "task=voice", "model=voice_crnn", "num-supernodes=2",
                              "min-partition-size=2"],
            "five-rows": ["num-supernodes=2"],
            "non-utf8-folder": ["num-supernodes=2", "min-partition-size=2"]}[case]
    repo = Path(__file__).resolve().parents[1]
    args = [sys.executable, "-m", "simulations.cli", "simulate", "--set", "num-server-rounds=1",
            "--set", f"runs-dir={tmp_path / 'runs'}"]
    for item in [*sets, f"data-dir={folder}"]:
        args += ["--set", item]
    done = subprocess.run([os.fsencode(a) for a in args], capture_output=True, timeout=600, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    out, err = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")  # strict: no undecodable bytes printed
    assert done.returncode == 2, (out, err)
    assert "Traceback" not in out + err and "ERROR" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("fedemo: error:")]
    assert len(errors) == 1 and printable_name(folder) in errors[0], err


def printable_name(folder) -> str:
    import os

    return os.fsencode(str(folder)).decode("utf-8", errors="backslashreplace")
