"""The report page as an auditor reads it: the DP figures at a glance, the loss explained, and a phone's screen.

Built from real runs' records (tests/fixtures: learned_run, a quickstart run; dp_run, a real
`configs/quickstart_dp.toml` run with its four nodes' privacy ledgers) by the real `fedemo report --build`,
and laid out by a real Chromium where one is installed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from simulations.cli import main as fedemo

pytestmark = pytest.mark.slow  # builds reports (matplotlib plots): a few seconds each

FIXTURES = Path(__file__).parent / "fixtures"


def built(name: str, root: Path, edit=None) -> Path:
    run = root / name
    shutil.copytree(FIXTURES / name, run)
    if edit:
        edit(run)
    assert fedemo(["report", "--build", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    return built("dp_run", tmp_path_factory.mktemp("page"))


def cells(html: str, header: str) -> list[str]:
    """The text of one column of the first table that has ``header``."""
    table = next(t for t in re.findall(r"<table>.*?</table>", html, re.S) if f"<th>{header}</th>" in t)
    heads = re.findall(r"<th>(.*?)</th>", table)
    column = heads.index(header)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1], re.S)
    return [re.sub(r"<[^>]+>", "", re.findall(r"<td>(.*?)</td>", row, re.S)[column]) for row in rows]


def test_the_dp_page_shows_epsilon_and_delta_at_a_glance_with_one_precision(dp_run):
    html = (dp_run / "report.html").read_text(encoding="utf-8")
    report = json.loads((dp_run / "report.json").read_text())
    clients = report["privacy"]["clients"]
    headline = html[html.index('<div class="headline">'):html.index("<h2>Summary</h2>")]
    assert f"training epsilon (largest)</span><b>{report['privacy']['max_epsilon']:.2f}</b>" in headline
    largest_delta = max(c["delta"] for c in clients)
    assert f'delta up to <span class="nw">{largest_delta:.1e}</span>' in headline  # one unbreakable figure
    assert cells(html, "training epsilon") == [f"{c['epsilon']:.2f}" for c in clients]
    assert cells(html, "evaluation-count epsilon") == [f"{c['eval_epsilon']:.2f}" for c in clients]
    assert cells(html, "delta") == [f"{c['delta']:.1e}" for c in clients]
    assert all(re.fullmatch(r"\d\.\de-\d\d", d) for d in cells(html, "delta"))
    assert re.search(r'<td><span class="nw">\d\.\de-\d\d</span></td>', html)  # delta never wraps mid-number


def test_a_loss_that_climbs_while_accuracy_holds_is_explained(tmp_path):
    def climbing_loss(run: Path) -> None:  # the record a DP run whose head grew overconfident leaves
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        for entry, loss in zip(lines[1:], (1.40, 2.2, 3.1, 4.8, 6.36)):
            entry["loss"] = loss
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))

    run = built("learned_run", tmp_path, climbing_loss)
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "The test loss climbed from 1.40 (round 1) to 6.36 (round 5) while accuracy held" in html
    assert "overconfident" in html and html.count("overconfident") == 2  # in the summary and under the plot

    plain = built("learned_run", tmp_path / "plain")  # its loss falls: nothing to explain
    assert "overconfident" not in (plain / "report.html").read_text(encoding="utf-8")


def test_the_page_fits_a_phone_screen(dp_run):
    """At 390 px the page does not scroll sideways: wide tables scroll inside their own wrapper."""
    html = (dp_run / "report.html").read_text(encoding="utf-8")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert html.count("<table>") == html.count('<div class="scroll"><table>') > 3
    assert re.search(r"\.scroll\{overflow-x:auto", html)

    from simulations.screenshot_report import find_browser, overflow

    if find_browser() is None:
        pytest.skip("no Chromium here: apt-get install -y chromium")
    visible, content = overflow(dp_run / "report.html", width=390)
    assert 300 < visible and content <= visible, (visible, content)
