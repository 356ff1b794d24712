"""`fedemo compare` checks that both runs scored the same test rows (server/report/compare.py test_rows_check,
simulations/split_digest.py) and names metrics in words; a federated run and its centralised baseline compare.

The fast tests use real run records (tests/fixtures) as a deployed run leaves them: no data-dir on the
coordinator, so no digest of the test rows can exist. The slow one runs a real tiny federation and the
centralised baseline on the same data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from simulations.cli import main as fedemo

FIXTURES = Path(__file__).parent / "fixtures"


def deployed_copy(source: str, root: Path, name: str, **run_config) -> Path:
    """A fixture run as a deployment records it (no data-dir: the rows stay at the hospitals), report built."""
    run = root / name
    shutil.copytree(FIXTURES / source, run)
    config = json.loads((run / "config.json").read_text())
    config["data_dir"] = ""
    config["run_config"].update(run_config)
    (run / "config.json").write_text(json.dumps(config))
    assert fedemo(["report", "--build", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deployed")
    return deployed_copy("learned_run", root, "a"), deployed_copy("learned_run", root, "b")


@pytest.mark.slow  # builds and signs two real runs' reports
def test_deployed_runs_compare_with_a_loud_cannot_confirm_and_metric_names_in_words(deployed, tmp_path, capsys):
    a, b = deployed
    out = tmp_path / "cmp"
    assert fedemo(["compare", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("WARNING: Cannot confirm that A and B scored the same test rows: deployed runs")
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["test_rows"]["status"] == "unconfirmed"
    html = (out / "comparison.html").read_text()
    assert "TEST ROWS NOT CONFIRMED" in html
    assert "<td>macro-F1</td>" in html and "<td>UAR (mean recall over emotions)</td>" in html
    assert "<td>macro_f1</td>" not in html and "<td>uar</td>" not in html


@pytest.mark.slow  # builds and signs a real run's report
def test_runs_whose_test_split_settings_differ_are_refused_unless_allowed(deployed, tmp_path, capsys):
    a, _ = deployed
    other = deployed_copy("learned_run", tmp_path, "seed7", seed=7)  # another seed: other rows land in test
    assert fedemo(["compare", str(a), str(other), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "different test rows" in err and "seed 42 in A, 7 in B" in err and "--allow-different-test-rows" in err
    assert not (tmp_path / "refused" / "comparison.json").exists()

    assert fedemo(["compare", str(a), str(other), "--out", str(tmp_path / "allowed"),
                   "--allow-different-test-rows"]) == 0
    assert capsys.readouterr().out.startswith("WARNING: A and B were scored on DIFFERENT test rows")
    assert "DIFFERENT TEST ROWS" in (tmp_path / "allowed" / "comparison.html").read_text()


TINY = ["--set", "num-server-rounds=1", "--set", "synth-samples=300", "--set", "num-supernodes=2",
        "--set", "min-available-nodes=2", "--set", "local-epochs=1"]


@pytest.mark.slow  # a real federated simulation and the centralised baseline
def test_a_federation_and_its_centralised_baseline_compare_on_the_same_test_rows(tmp_path, capsys):
    config = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.toml")
    common = [*TINY, "--set", f"data-dir={tmp_path / 'fer'}", "--set", f"runs-dir={tmp_path / 'runs'}"]
    assert fedemo(["simulate", config, *common, "--set", "run-name=fed"]) == 0
    assert fedemo(["baseline", config, *common, "--set", "run-name=central", "--epochs", "1"]) == 0
    fed, central = tmp_path / "runs" / "fed", tmp_path / "runs" / "central"
    capsys.readouterr()
    assert fedemo(["compare", str(fed), str(central), "--out", str(tmp_path / "gap")]) == 0
    printed = capsys.readouterr().out
    assert "WARNING" not in printed and "both runs scored the same test rows" in printed.lower()
    comparison = json.loads((tmp_path / "gap" / "comparison.json").read_text())
    fed_rows = json.loads((fed / "report.json").read_text())["final"]["eval_examples"]
    assert comparison["test_rows"]["status"] == "same" and comparison["test_rows"]["a"]["n"] == fed_rows
    assert "centralised baseline" in comparison["runs"]["b"]["label"]
    assert comparison["runs"]["b"]["signature"]["valid"]
    assert comparison["global"]["accuracy"]["change"] is not None  # the federated gap, B (pooled) minus A
