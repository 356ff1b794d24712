"""What people read is covered by the signature, and verify tells a finished run from one that is not.

Built on a real quickstart run's record (tests/fixtures/learned_run: its config, metrics and summary), its
report built and signed here by the real `fedemo report --build`, checked by the real `fedemo verify`.
An auditor reads report.html, not report.json: an edited page (77.6% made 97.6%) must fail verify and be named;
a page rebuilt over an altered report.json must say UNVERIFIED; a folder without a report must not be
called INVALID (exit 1) as if someone had tampered with it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from simulations.cli import main as fedemo

pytestmark = pytest.mark.slow  # builds a report (matplotlib plots): a few seconds

LEARNED_RUN = Path(__file__).parent / "fixtures" / "learned_run"


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    run = tmp_path_factory.mktemp("tamper") / "learned"
    shutil.copytree(LEARNED_RUN, run)
    assert fedemo(["report", "--build", str(run)]) == 0
    return run


@pytest.fixture
def run(signed, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(signed, copy)
    return copy


def verify(run_dir: Path, capsys) -> tuple[int, str]:
    code = fedemo(["verify", str(run_dir)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def headline_accuracy(html: str) -> str:
    return re.search(r"accuracy \(round \d+\)</span><b>(\d+\.\d)%</b>", html).group(1)


def test_an_edited_page_fails_verify_and_verify_names_the_page(run, capsys):
    assert verify(run, capsys)[0] == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    shown = headline_accuracy(page)
    forged = page.replace(f"<b>{shown}%</b>", f"<b>9{shown[1:]}%</b>", 1)
    assert forged != page
    (run / "report.html").write_text(forged, encoding="utf-8")
    code, out = verify(run, capsys)
    assert code == 1 and "INVALID" in out and "report.html CHANGED" in out, out
    assert "report.json CHANGED" not in out  # the report itself is intact: verify names the file that changed
    assert f"fedemo report {run}" in out  # report.json verifies, so rebuilding the page is the fix
    (run / "report.html").write_text(page, encoding="utf-8")
    assert verify(run, capsys)[0] == 0


def test_a_page_without_a_page_signature_must_be_exactly_the_rendered_page(run, capsys):
    """Runs signed before pages were signed (no ``pages`` in report.sig): the page is re-rendered from the
    signed report.json and compared byte for byte."""
    sig = json.loads((run / "report.sig").read_text())
    sig.pop("pages", None)  # what a run signed before pages were signed has
    (run / "report.sig").write_text(json.dumps(sig))
    assert verify(run, capsys)[0] == 0  # the untouched page is exactly what report.json renders to
    page = (run / "report.html").read_bytes()
    (run / "report.html").write_bytes(page.replace(b"</h1>", b" </h1>", 1))  # one added space
    code, out = verify(run, capsys)
    assert code == 1 and "report.html CHANGED" in out and "holds no page signature" in out, out


def test_a_page_rebuilt_over_an_altered_report_is_unverified_and_not_advised(run, capsys):
    data = (run / "report.json").read_bytes()
    final = json.loads(data)["final"]["accuracy"]
    altered = data.replace(json.dumps(final).encode(), json.dumps(round(min(final + 0.4, 0.99), 4)).encode())
    assert altered != data
    (run / "report.json").write_bytes(altered)
    assert fedemo(["report", str(run)]) == 1  # the page is written, but the command does not call it fine
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "UNVERIFIED: this page was built from a report.json that does not match its signature" in page
    assert page.index("UNVERIFIED") < page.index("<h1>")  # first thing on the page
    assert "signed by the coordinator key" not in page
    code, out = verify(run, capsys)
    assert code == 1 and "report.json CHANGED" in out
    assert "rebuild it with" not in out and "do not rebuild report.html over it" in out, out

    (run / "report.json").write_bytes(data)
    (run / "report.sig").unlink()  # unsigned: also unverified
    assert fedemo(["report", str(run)]) == 1
    assert "UNVERIFIED" in (run / "report.html").read_text(encoding="utf-8")


def write_checkpoint(run_dir: Path, server_round: int) -> None:
    from flwr.app import Array, ArrayRecord

    from server.record.checkpoint import Checkpoint

    Checkpoint(server_round, ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})).save(run_dir)


def test_verify_tells_complete_incomplete_and_no_report_yet_apart(run, tmp_path, capsys):
    planned = json.loads((run / "config.json").read_text())["run_config"]["num-server-rounds"]
    code, out = verify(run, capsys)
    assert code == 0 and out.startswith("valid")

    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(run / "config.json", started / "config.json")
    code, out = verify(started, capsys)
    assert code == 5 and "NO REPORT YET" in out and "INVALID" not in out, out

    write_checkpoint(started, 1)
    code, out = verify(started, capsys)
    assert code == 3 and "INCOMPLETE (resumable)" in out and f"round 1 of {planned}" in out, out
    assert f"fedemo simulate --resume {started}" in out

    write_checkpoint(started, planned)  # every round done, the coordinator died before the report
    code, out = verify(started, capsys)
    assert code == 3 and "INCOMPLETE (resumable)" in out and f"fedemo report --build {started}" in out, out

    # A signed report of an incomplete run: resumable only with a checkpoint in the folder.
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(metrics[:2]) + "\n")
    (run / "summary.json").unlink()
    assert fedemo(["report", "--build", str(run)]) == 0
    code, out = verify(run, capsys)
    assert code == 3 and "INCOMPLETE (not resumable: no checkpoint)" in out, out
    write_checkpoint(run, 1)
    code, out = verify(run, capsys)
    assert code == 3 and "INCOMPLETE (resumable)" in out and f"fedemo simulate --resume {run}" in out, out
