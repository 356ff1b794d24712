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
from shared_models.taxonomy import NUM_EMOTIONS
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
dp-accountant = "rdp"
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
        assert client["delta"] == ledger.delta and client["accountant"] == ledger.accountant == "rdp"
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
    assert "cmp-a" in html and "cmp-b" in html and "no DP-SGD" in html and "DP-SGD, max epsilon" in html

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
    assert fedemo(["verify", str(run)]) == 1
    assert fedemo(["report", str(run)]) == 2
    assert "fedemo report --build" in capsys.readouterr().err
    assert fedemo(["report", "--build", str(run)]) == 0
    assert fedemo(["verify", str(run)]) == 0
    rebuilt = json.loads((run / "report.json").read_text())
    original = json.loads((run_a / "report.json").read_text())
    assert {k: v for k, v in rebuilt.items() if k != "generated_at"} == \
        {k: v for k, v in original.items() if k != "generated_at"}  # the same report from the same folder
