"""The signed run report: real Flower runs (without and with DP), real files, real signatures.

One module fixture runs `fedemo compare CONFIG` (A: dp=false, B: dp=true on a
tiny face federation), which is itself the comparison test's input; the
other tests read the two run folders it leaves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score

from shared_models.privacy_ledger import PrivacyLedger
from server.report.build import coordinator_key
from server.report.signing import SigningError, canonical_bytes
from shared_models.taxonomy import EMOTIONS, NUM_EMOTIONS
from simulations.cli import main as fedemo

pytestmark = pytest.mark.slow

TINY = """
task = "face"
dataset = "fer2013"
synth-samples = 300
num-supernodes = 3
min-available-nodes = 3
num-server-rounds = 2
local-epochs = 1
dp-epsilon = 2.0
dp-accountant = "pld"
fairness-min-group-size = 8
run-name = "cmp"
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(run A without DP, run B with DP, comparison folder, the compare command's output)."""
    root = tmp_path_factory.mktemp("report")
    config = root / "tiny.toml"
    config.write_text(TINY)
    out = root / "comparison"
    code = fedemo(["compare", str(config), "--out", str(out), "--set", f'data-dir="{root / "fer"}"',
                   "--set", f'runs-dir="{root / "runs"}"'])
    assert code == 0
    return root / "runs" / "cmp-a", root / "runs" / "cmp-b", out


LEARNED_RUN = Path(__file__).parent / "fixtures" / "learned_run"  # a real quickstart run's record, 5 rounds


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A run whose model learned (55.8% against a 26.2% majority class): the metrics, config and summary a real
    `fedemo simulate configs/quickstart.toml` wrote, its report built and signed here. A run that learns takes
    minutes on 2 cores; the tiny runs above do not get past the majority class."""
    run = tmp_path_factory.mktemp("learned") / "learned"
    shutil.copytree(LEARNED_RUN, run)
    assert fedemo(["report", "--build", str(run)]) == 0
    return run


def verify(run_dir: Path, capsys, *extra: str) -> tuple[int, str]:
    code = fedemo(["verify", str(run_dir), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_every_run_writes_a_signed_report_that_verifies(runs, capsys):
    run_a, run_b, _ = runs
    key_path = Path(os.environ["FEDEMO_SIGNING_KEY"])
    assert key_path.is_file() and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key_ids = set()
    for run_dir in (run_a, run_b):
        for name in ("report.json", "report.sig", "report.pub", "report.html"):
            assert (run_dir / name).is_file(), name
        assert not any(b"PRIVATE KEY" in p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
        data = (run_dir / "report.json").read_bytes()
        report = json.loads(data)
        assert canonical_bytes(report) == data  # the file is its own canonical form
        assert report["schema_version"] == 1 and report["config"]["run-name"] == run_dir.name
        assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
        sig = json.loads((run_dir / "report.sig").read_text())
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
        public.verify(base64.b64decode(sig["signature"]), data)  # the signature covers the exact bytes
        assert sig["key_id"] == hashlib.sha256(base64.b64decode(sig["public_key"])).hexdigest()
        key_ids.add(sig["key_id"])
        code, out = verify(run_dir, capsys)
        assert code == 0 and out.startswith("valid") and sig["key_id"] in out
    assert len(key_ids) == 1  # the key was created once and reused by the second run
    code, out = verify(run_b, capsys, "--public-key", str(run_a / "report.pub"))
    assert code == 0


def test_any_changed_byte_of_report_json_is_rejected(runs, tmp_path, capsys):
    _, run_b, _ = runs
    data = (run_b / "report.json").read_bytes()
    sig = json.loads((run_b / "report.sig").read_text())
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"]))
    signature = base64.b64decode(sig["signature"])
    for i in range(len(data)):  # every single byte, flipped
        changed = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
        with pytest.raises(InvalidSignature):
            public.verify(signature, changed)

    run = tmp_path / "run"
    shutil.copytree(run_b, run)
    epsilon = re.search(rb'"epsilon":(\d)\.(\d)', data)
    digit = epsilon.start(2)
    cases = {
        "a digit inside a privacy number": (data[:digit] + bytes([ord("0") + (data[digit] - ord("0") + 1) % 10])
                                            + data[digit + 1:], ["sections that differ from the signed ones: privacy"]),
        "the first byte": (b" " + data[1:], ["no longer valid JSON"]),
        "the last byte": (data[:-1] + b" ", ["no longer valid JSON"]),
        "a trailing newline": (data + b"\n", ["not in canonical form", f"{len(data) + 1} bytes; {len(data)} were signed"]),
        "pretty-printed, same content": (json.dumps(json.loads(data), indent=1).encode(), ["not in canonical form"]),
    }
    for what, (changed, expected) in cases.items():
        assert changed != data, what
        (run / "report.json").write_bytes(changed)
        code, out = verify(run, capsys)
        assert code == 1, what
        assert "INVALID" in out and "signature does not match report.json" in out, (what, out)
        for text in expected:
            assert text in out, (what, text, out)

    (run / "report.json").write_bytes(data)
    assert verify(run, capsys)[0] == 0
    (run / "report.html").write_text((run / "report.html").read_text().replace(hashlib.sha256(data).hexdigest(), "0" * 64))
    code, out = verify(run, capsys)
    assert code == 1 and "report.html was built from another report.json" in out
    (run / "report.sig").unlink()
    code, out = verify(run, capsys)
    assert code == 1 and "report.sig is missing" in out
    shutil.copy(run_b / "report.sig", run / "report.sig")
    other_key = coordinator_key(str(tmp_path / "other.pem"), tmp_path / "runs")
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "other.pub").write_bytes(other_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, out = verify(run_b, capsys, "--public-key", str(tmp_path / "other.pub"))
    assert code == 1 and "not the trusted key" in out


def test_report_privacy_figures_equal_the_nodes_ledgers(runs):
    run_a, run_b, _ = runs
    report = json.loads((run_b / "report.json").read_text())
    privacy = report["privacy"]
    assert privacy["sample_level_dp"] is True and len(privacy["clients"]) == 3
    assert privacy["ledger_check"]["ok"] and privacy["ledger_check"]["status"] == "all 3 ledgers match"
    for client in privacy["clients"]:
        ledger = PrivacyLedger.load(run_b / "node-state" / f"client-{client['client_id']}" / "privacy_ledger.json")
        events = ledger.events
        assert client["epsilon"] == pytest.approx(ledger.spent(), rel=1e-9) == events[-1].epsilon_after
        assert client["budget_remaining"] == pytest.approx(ledger.remaining(), rel=1e-9, abs=1e-12)
        assert client["delta"] == ledger.delta and client["accountant"] == ledger.accountant == "pld"
        assert client["budget"] == ledger.epsilon_budget == 2.0
        assert client["steps"] == sum(e.steps for e in events) and client["rounds_trained"] == len(events) == 2
        assert client["noise_multiplier"] == events[-1].noise_multiplier
        assert client["sample_rate"] == events[-1].sample_rate
        assert client["max_grad_norm"] == events[-1].max_grad_norm == 1.0
        assert [h["epsilon"] for h in client["history"]] == [e.epsilon_after for e in events]
    assert privacy["max_epsilon"] == max(c["epsilon"] for c in privacy["clients"])
    plain = json.loads((run_a / "report.json").read_text())["privacy"]
    assert plain["sample_level_dp"] is False and plain["clients"] == []


def test_report_group_figures_match_fairlearn_on_the_same_counts(runs):
    _, run_b, _ = runs
    report = json.loads((run_b / "report.json").read_text())
    last = [json.loads(line) for line in (run_b / "metrics.jsonl").read_text().splitlines()][-1]
    min_size = report["fairness_settings"]["min_group_size"]
    assert min_size == 8 and report["fairness_settings"]["round"] == last["round"] == 2
    reported_somewhere = 0
    for attribute, figures in report["fairness"].items():
        kept = {g: v for g, v in figures["groups"].items() if not v["suppressed"]}
        for group, v in figures["groups"].items():
            counts = np.asarray(last["groups"][attribute][group])
            if v["suppressed"]:
                assert counts.sum() < min_size and "confusion" not in v and group in figures["suppressed_groups"]
            else:
                assert v["confusion"] == counts.tolist() and v["n"] == counts.sum() >= min_size
        if not kept:
            continue
        reported_somewhere += len(kept)
        # Fairlearn on label arrays expanded from the report's own confusion counts.
        y_true, y_pred, sensitive = [], [], []
        for group, v in kept.items():
            cells = np.asarray(v["confusion"]).ravel()
            y_true += list(np.repeat(np.arange(NUM_EMOTIONS * NUM_EMOTIONS) // NUM_EMOTIONS, cells))
            y_pred += list(np.repeat(np.arange(NUM_EMOTIONS * NUM_EMOTIONS) % NUM_EMOTIONS, cells))
            sensitive += [group] * int(cells.sum())
        frame = MetricFrame(metrics=accuracy_score, y_true=y_true, y_pred=y_pred, sensitive_features=sensitive)
        for group, v in kept.items():
            assert v["accuracy"] == pytest.approx(frame.by_group[group])
            assert v["accuracy_ci"][0] <= v["accuracy"] <= v["accuracy_ci"][1]
        assert figures["worst_group"]["accuracy"] == pytest.approx(frame.group_min())
        if len(kept) > 1:
            assert figures["accuracy_gap"]["value"] == pytest.approx(frame.difference())
    assert reported_somewhere >= 2


def test_report_html_is_self_contained_readable_and_rebuilt_identically(runs, capsys):
    _, run_b, _ = runs
    html = (run_b / "report.html").read_text()
    assert "<h2>Summary</h2>" in html and "Every hospital trained with differential privacy" in html
    assert html.count('src="data:image/png;base64,') >= 3  # group accuracy, epsilon per client, global
    assert not re.search(r'(src|href)="https?:', html)  # nothing fetched from the network
    report = json.loads((run_b / "report.json").read_text())
    suppressed = [g for f in report["fairness"].values() for g in f["suppressed_groups"]]
    if suppressed:
        assert "suppressed: too few samples" in html and "Too small to report" in html
    original = (run_b / "report.html").read_bytes()
    (run_b / "report.html").unlink()
    assert fedemo(["report", str(run_b)]) == 0
    assert (run_b / "report.html").read_bytes() == original
    assert fedemo(["verify", str(run_b)]) == 0
    capsys.readouterr()


def test_compare_writes_one_side_by_side_report(runs, tmp_path, capsys):
    run_a, run_b, out = runs
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["config_differences"] == {"dp": [False, True]}
    assert all(comparison["runs"][s]["signature"]["valid"] for s in ("a", "b"))
    assert comparison["runs"]["b"]["report_sha256"] == hashlib.sha256((run_b / "report.json").read_bytes()).hexdigest()
    a = json.loads((run_a / "report.json").read_text())
    b = json.loads((run_b / "report.json").read_text())
    assert comparison["global"]["accuracy"]["change"] == pytest.approx(b["final"]["accuracy"] - a["final"]["accuracy"])
    for attribute, item in comparison["attributes"].items():
        for group, row in item["groups"].items():
            for side, report in (("a", a), ("b", b)):
                figures = report["fairness"][attribute]["groups"][group]
                assert row[side]["suppressed"] == figures["suppressed"]
                if not figures["suppressed"]:
                    assert row[side]["accuracy"] == figures["accuracy"]
            if row["accuracy_change"] is not None:
                assert row["accuracy_change"] == pytest.approx(row["b"]["accuracy"] - row["a"]["accuracy"])
                assert row["accuracy_change_ci"][0] <= row["accuracy_change"] <= row["accuracy_change_ci"][1]
        assert item["worst_group"]["a"] == a["fairness"][attribute]["worst_group"]
    html = (out / "comparison.html").read_text()
    assert "cmp-a" in html and "cmp-b" in html and "no DP-SGD" in html and "DP-SGD, max training epsilon" in html

    # The two-folder form gives the same comparison; a tampered input is named in it.
    tampered = tmp_path / "tampered"
    shutil.copytree(run_b, tampered)
    data = (tampered / "report.json").read_bytes()
    (tampered / "report.json").write_bytes(data.replace(b'"dataset":"fer2013"', b'"dataset":"fer2014"', 1))
    assert fedemo(["compare", str(run_a), str(tampered), "--out", str(tmp_path / "cmp")]) == 0
    again = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert again["runs"]["a"]["signature"]["valid"] and not again["runs"]["b"]["signature"]["valid"]
    assert any("did not verify" in line for line in again["findings"])
    assert fedemo(["compare", str(run_a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "report.json is missing" in capsys.readouterr().err


def test_signing_key_is_created_once_private_and_never_in_a_run_folder(tmp_path):
    key_path = tmp_path / "keys" / "coordinator.pem"
    first = coordinator_key(str(key_path), tmp_path / "runs")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    pem = key_path.read_bytes()
    second = coordinator_key(str(key_path), tmp_path / "runs")
    assert key_path.read_bytes() == pem  # never overwritten
    assert second.public_key().public_bytes_raw() == first.public_key().public_bytes_raw()
    with pytest.raises(SigningError, match="inside the runs folder"):
        coordinator_key(str(tmp_path / "runs" / "k.pem"), tmp_path / "runs")
    (tmp_path / "garbage.pem").write_text("not a key")
    with pytest.raises(SigningError, match="garbage.pem"):
        coordinator_key(str(tmp_path / "garbage.pem"), tmp_path / "runs")


def test_report_build_signs_a_run_folder_that_has_no_report(runs, tmp_path, capsys):
    run_a, _, _ = runs
    run = tmp_path / "old-run"
    shutil.copytree(run_a, run)
    for path in run.glob("report.*"):
        path.unlink()
    # Not INVALID (nothing was altered): every planned round is in its checkpoint, the report was never written.
    assert fedemo(["verify", str(run)]) == 3
    assert "INCOMPLETE (resumable)" in capsys.readouterr().out
    assert fedemo(["report", str(run)]) == 2
    assert "fedemo report --build" in capsys.readouterr().err
    assert fedemo(["report", "--build", str(run)]) == 0
    assert fedemo(["verify", str(run)]) == 0
    rebuilt = json.loads((run / "report.json").read_text())
    original = json.loads((run_a / "report.json").read_text())
    assert {k: v for k, v in rebuilt.items() if k != "generated_at"} == \
        {k: v for k, v in original.items() if k != "generated_at"}  # the same report from the same folder


# --------------------------------------------------------------------------- what the page says at a glance
def rebuilt(run_dir: Path, tmp_path: Path, name: str, *, keep_rounds: int | None = None,
            keep_summary: bool = True) -> Path:
    """A copy of a real run folder, its report rebuilt from its own metrics (optionally only the first rounds,
    without summary.json: what a coordinator killed after those rounds leaves)."""
    run = tmp_path / name
    shutil.copytree(run_dir, run)
    for path in run.glob("report.*"):
        path.unlink()
    if keep_rounds is not None:
        lines = (run / "metrics.jsonl").read_text().splitlines()[:keep_rounds]
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if not keep_summary:
        (run / "summary.json").unlink()
    assert fedemo(["report", "--build", str(run)]) == 0
    return run


def last_round(run_dir: Path) -> dict:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]


def check_majority_rule(run_dir: Path) -> bool:
    """The baseline figures equal the run's own counts, and the warning is shown exactly when the rule holds."""
    report = json.loads((run_dir / "report.json").read_text())
    html = (run_dir / "report.html").read_text()
    counts = np.asarray(last_round(run_dir)["confusion"]["counts"])
    totals = counts.sum(axis=1)  # true-class totals of the test rows
    baseline = report["baseline"]
    assert [baseline["class_totals"][emotion] for emotion in EMOTIONS] == totals.tolist()
    assert baseline["n"] == totals.sum() == report["final"]["eval_examples"]
    assert baseline["majority_rate"] == pytest.approx(totals.max() / totals.sum())
    assert baseline["chance_rate"] == pytest.approx(1 / NUM_EMOTIONS)
    low, high = report["final"]["accuracy_ci"]
    expected = low <= baseline["majority_rate"]
    assert baseline["no_better_than_majority"] is expected
    majority_pct = f"{100 * baseline['majority_rate']:.1f}%"
    assert majority_pct in html and f"{100 * baseline['chance_rate']:.1f}%" in html  # beside the accuracy
    assert ("No better than the majority class" in html) is expected
    assert (baseline["warning"] is not None) is expected
    for figures in report["fairness"].values():
        assert figures["meaningful"] is (not expected)
    if report["fairness"]:
        assert report["fairness_settings"]["meaningful"] is (not expected)
        assert ("worst-served group is" in html) is (not expected)
        assert ("NOT MEANINGFUL" in html) is expected
    return expected


def test_a_model_no_better_than_the_majority_class_is_called_so_and_its_group_claims_are_withheld(runs, tmp_path):
    run_a, run_b, _ = runs
    for run_dir in (run_a, run_b):
        check_majority_rule(run_dir)
    # The same real run before any training (round 0 alone): an untrained model cannot beat the majority class.
    untrained = rebuilt(run_a, tmp_path, "untrained", keep_rounds=1, keep_summary=False)
    assert check_majority_rule(untrained) is True
    report = json.loads((untrained / "report.json").read_text())
    assert "majority class" in report["baseline"]["warning"] and report["baseline"]["majority_class"] in EMOTIONS


def test_a_model_that_learned_is_not_warned_about(learned):
    assert check_majority_rule(learned) is False
    html = (learned / "report.html").read_text()
    assert "worst-served group is" in html and "No better than the majority class" not in html


def test_the_page_uses_one_unit_per_kind_of_figure(runs, learned):
    for run_dir in (*runs[:2], learned):
        report = json.loads((run_dir / "report.json").read_text())
        html = (run_dir / "report.html").read_text()
        text = re.sub(r"<[^>]+>", " ", html)
        assert not re.search(r"percentage points \(95%", text)
        assert not re.search(r"gap (of )?0\.\d{3}", text)  # never a gap as a fraction
        for attribute, figures in report["fairness"].items():
            gap = figures["accuracy_gap"]
            if gap["value"] is None:
                continue
            assert f"{100 * gap['value']:.1f} pp" in text
            low, high = gap["difference_ci"]  # the signed best-minus-worst difference: may go below 0
            assert f"{100 * low:.1f} to {100 * high:.1f} pp" in text
            ratio = figures["accuracy_ratio"]
            assert f"{ratio['value']:.2f}" in text and f"{ratio['ci'][0]:.2f} to {ratio['ci'][1]:.2f}" in text
            if figures["flagged"]:
                assert re.search(r"accuracy gap \d+\.\d pp between .*: its 95% interval \(-?\d+\.\d to -?\d+\.\d "
                                 r"pp\) lies above the threshold \d+\.\d pp", figures["flag_reason"])
        final = report["final"]
        assert f"{100 * final['accuracy']:.1f}%" in text
        assert f"{100 * final['accuracy_ci'][0]:.1f}% to {100 * final['accuracy_ci'][1]:.1f}%" in text
        assert f"{100 * final['macro_f1']:.1f}%" in text  # macro-F1 in % as well, in the headline and tables


def test_the_page_names_the_signing_key_and_every_image_has_alt_text(runs, learned):
    for run_dir in (*runs[:2], learned):
        html = (run_dir / "report.html").read_text()
        key_id = json.loads((run_dir / "report.sig").read_text())["key_id"]
        assert f'id="key-fingerprint">{key_id}<' in html
        images = re.findall(r"<img\b[^>]*>", html)
        assert len(images) >= 4
        for tag in images:
            alt = re.search(r'\balt="([^"]*)"', tag)
            assert alt and len(alt.group(1)) > 30, tag[:120]


def test_the_page_shows_each_hospitals_test_results_and_each_groups_accuracy_over_rounds(runs):
    _, run_b, _ = runs
    report = json.loads((run_b / "report.json").read_text())
    html = (run_b / "report.html").read_text()
    rounds = [json.loads(line) for line in (run_b / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = rounds[-1]["evaluate"]["clients"]
    hospitals = report["hospitals"]["clients"]
    assert [(h["client_id"], h["num_examples"], h["accuracy"]) for h in hospitals] == \
        [(str(c["client"]), c["num_examples"], c["accuracy"]) for c in logged]
    assert "Each hospital&#x27;s test results" in html or "Each hospital's test results" in html
    for hospital in hospitals:
        assert f"<td>{hospital['client_id']}</td><td>{hospital['num_examples']}</td>" in html
        assert [h["round"] for h in hospital["history"]] == [r["round"] for r in rounds]
    assert report["hospitals"]["counts_noised"] is False  # exact counts in this run: said, with intervals
    min_size = report["fairness_settings"]["min_group_size"]
    for attribute, figures in report["fairness"].items():
        assert [h["round"] for h in figures["history"]] == [r["round"] for r in rounds if r.get("groups")]
        for h, entry in zip(figures["history"], [r for r in rounds if r.get("groups")]):
            for group, item in h["groups"].items():
                counts = np.asarray(entry["groups"][attribute][group])
                assert counts.sum() >= min_size and item["n"] == counts.sum()
                assert item["accuracy"] == pytest.approx(np.trace(counts) / counts.sum())
        if any(h["groups"] for h in figures["history"]):
            assert f"Accuracy per {attribute} group over rounds" in html


def test_verify_and_the_page_call_an_incomplete_run_incomplete(runs, tmp_path, capsys):
    run_a, _, _ = runs
    killed = rebuilt(run_a, tmp_path, "killed", keep_rounds=2, keep_summary=False)  # round 0 and 1 of 2
    report = json.loads((killed / "report.json").read_text())
    assert report["run"]["incomplete"] and report["run"]["rounds_completed"] == 1
    code, out = verify(killed, capsys)
    assert code == 3 and not out.startswith("valid") and "INCOMPLETE" in out and "1 of 2 planned rounds" in out
    assert "signature valid" in out
    html = (killed / "report.html").read_text()
    assert "Incomplete run: 1 of 2 planned rounds done" in html
    code, out = verify(run_a, capsys)
    assert code == 0 and out.startswith("valid") and "INCOMPLETE" not in out


def test_the_page_renders_in_a_real_browser(runs, tmp_path):
    """Chromium (Debian's package) draws the page; the screenshot is not blank (look at it: docs/report.md)."""
    from PIL import Image

    from simulations.screenshot_report import find_browser, screenshot

    if find_browser() is None:
        pytest.skip("no Chromium here: apt-get install -y chromium")
    _, run_b, _ = runs
    png = screenshot(run_b / "report.html", tmp_path / "report.png", width=1280, height=3000)
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape == (3000, 1280)
    assert (pixels < 128).mean() > 0.005  # text and plots, not an empty or error page
