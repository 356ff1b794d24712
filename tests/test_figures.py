"""Paper-ready outputs: a report build writes figures/ (SVG + 300-DPI PNG) and rounds.csv, one flat row per round
(server/report/figures.py); ``fedemo plot`` overlays runs (server/report/overlay.py).

The runs are real records (tests/fixtures: a DP quickstart run with its nodes' ledgers, a 5-round quickstart run
that learned); their reports are built and signed here, as `fedemo report --build` does.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from simulations.cli import main as fedemo

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The two fixture runs, each copied and its report built once for the module."""
    root = tmp_path_factory.mktemp("figures")
    out = {}
    for source in ("dp_run", "learned_run"):
        out[source] = root / source
        shutil.copytree(FIXTURES / source, out[source])
        assert fedemo(["report", "--build", str(out[source])]) == 0
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


@pytest.mark.slow  # builds and signs two real runs' reports
def test_a_dp_run_writes_figures_and_one_flat_row_per_round(runs):
    run = runs["dp_run"]
    report = json.loads((run / "report.json").read_text())
    figures = run / "figures"
    names = {p.name for p in figures.iterdir()}
    attributes = list(report["fairness"])
    assert attributes  # the DP quickstart data carries demographic groups
    for stem in ["accuracy", "epsilon"] + [f"groups-{a}" for a in attributes]:
        assert {f"{stem}.svg", f"{stem}.png"} <= names, names
        assert round(Image.open(figures / f"{stem}.png").info["dpi"][0]) == 300  # print resolution
        svg = ET.parse(figures / f"{stem}.svg").getroot()  # well-formed SVG, its text kept as text
        assert svg.tag.endswith("svg")
    assert "macro-F1" in (figures / "accuracy.svg").read_text()

    columns, rows = read_csv(figures / "rounds.csv")
    assert columns[:3] == ["round", "loss", "accuracy"] and "max_epsilon" in columns and "elapsed_s" in columns
    lines = metrics(run)
    assert [int(r["round"]) for r in rows] == [line["round"] for line in lines]
    spent: dict[str, float] = {}  # each node's cumulative epsilon so far, from metrics.jsonl itself
    for row, line, entry in zip(rows, lines, report["rounds"]):
        assert number(row["accuracy"]) == pytest.approx(line["accuracy"], rel=1e-12)
        assert number(row["macro_f1"]) == pytest.approx(line["macro_f1"], rel=1e-12)
        assert [number(row["accuracy_ci_low"]), number(row["accuracy_ci_high"])] == pytest.approx(entry["accuracy_ci"])
        train = line.get("train") or {}
        spent.update({c["client"]: c["dp"]["epsilon"] for c in train.get("clients", []) if "dp" in c})
        assert number(row["max_epsilon"]) == (pytest.approx(max(spent.values())) if spent else None)
        assert int(row["clients_trained"]) == len(train.get("clients", []))
        assert int(row["clients_rejected"]) == len(train.get("rejected", []))
        assert int(row["clients_evaluated"]) == len(line["evaluate"]["clients"])
    assert number(rows[-1]["max_epsilon"]) == pytest.approx(report["privacy"]["max_epsilon"])


@pytest.mark.slow  # builds and signs two real runs' reports
def test_a_run_without_dp_has_no_epsilon_figure_and_a_rebuild_leaves_no_stale_one(runs):
    run = runs["learned_run"]
    figures = run / "figures"
    assert not (figures / "epsilon.svg").exists()
    (figures / "epsilon.svg").write_text("<svg/>")  # as an older build of another report would have left it
    assert fedemo(["report", "--build", str(run)]) == 0
    assert not (figures / "epsilon.svg").exists()
    _, rows = read_csv(figures / "rounds.csv")
    assert all(r["max_epsilon"] == "" for r in rows) and len(rows) == len(metrics(run))


@pytest.mark.slow  # builds and signs two real runs' reports
def test_plot_overlays_two_runs_as_two_settings_with_their_own_curves(runs, tmp_path, capsys):
    dp, plain = runs["dp_run"], runs["learned_run"]
    out = tmp_path / "plot"
    assert fedemo(["plot", str(dp), str(plain), "--out", str(out)]) == 0
    assert "Wrote 6 files" in capsys.readouterr().out
    for stem in ("accuracy", "macro-f1"):
        assert (out / f"{stem}.svg").is_file()
        assert round(Image.open(out / f"{stem}.png").info["dpi"][0]) == 300
    _, rows = read_csv(out / "overlay.csv")
    settings = {r["setting"] for r in rows}
    assert len(settings) == 2 and any("dp=true" in s for s in settings)  # named by what tells them apart
    for run in (dp, plain):
        report = json.loads((run / "report.json").read_text())
        name = next(s for s in settings if ("dp=true" in s) == bool(report["config"]["dp"]))
        accuracy = {int(r["round"]): r for r in rows if r["setting"] == name and r["metric"] == "accuracy"}
        assert sorted(accuracy) == [e["round"] for e in report["rounds"]]
        for entry in report["rounds"]:
            row = accuracy[entry["round"]]
            assert row["n_runs"] == "1" and number(row["mean"]) == pytest.approx(entry["accuracy"])
            assert row["ci_low"] == "" and row["ci_high"] == ""  # one run: no interval, said so by its absence
    _, per_run = read_csv(out / "runs.csv")
    assert {r["run"] for r in per_run} == {str(dp), str(plain)}


def test_plot_names_a_folder_that_is_no_run(tmp_path, capsys):
    assert fedemo(["plot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "config.json is missing" in capsys.readouterr().err


@pytest.mark.slow  # builds and signs a real run's report
def test_a_figure_that_cannot_be_written_leaves_the_signed_report_standing(tmp_path, caplog):
    # figures/ blocked by a plain file: the report and its page are written and verify; the log says what is missing.
    run = tmp_path / "learned_run"
    shutil.copytree(FIXTURES / "learned_run", run)
    (run / "figures").write_text("not a folder")
    from server.report.build import report_at_end_of_run
    from server.report.signing import load_or_create_key

    key = load_or_create_key(tmp_path / "key.pem")
    assert report_at_end_of_run(run, key) == run / "report.json"
    assert (run / "report.html").is_file()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "No report written" not in messages and "no figures/" in messages
