"""report.html: the signed report.json made readable for people who do not read JSON.

One self-contained file (base64 PNG plots, no scripts, no network), a pure function of report.json, so
``fedemo report RUN_DIR`` rebuilds it and ``fedemo verify`` can re-render it byte for byte. The page names
the SHA-256 of its report.json; the coordinator signs its bytes; a report.json that does not verify gets
the UNVERIFIED banner. Its sections are ``PAGE_SECTIONS`` (one renderer each, in their own modules).
"""

from __future__ import annotations

import hashlib
import json
import re
from html import escape
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.report.fair_dp_section import fair_dp_html
from server.report.calibration import calibration_section
from server.report.audit_section import audit_banner, audit_html
from server.report.consent_section import consent_html
from server.report.fairness_html import fairness_html, group_reading  # noqa: F401 (importable from here)
from server.report.html_parts import (fingerprint, headline_html, hospitals_html, html_table, incomplete_banner,
                                      interval, loss_note, majority_banner, num, nw)
from server.report.page_style import CSS
from server.report.plots import pct, plot_global
from server.report.privacy_html import guarantees_html, privacy_html  # noqa: F401
from server.report.signing import HTML_FILE, REPORT_FILE, SIGNATURE_FILE, sign_page, verify_run
from server.report.summary_text import plain_summary
from shared_models.atomic_files import atomic_write_bytes

DIGEST_META = "fedemo-report-sha256"


def source_digest(html: str) -> str | None:
    """The report.json SHA-256 a report.html says it was built from."""
    match = re.search(rf'<meta name="{DIGEST_META}" content="([0-9a-f]{{64}})">', html)
    return match.group(1) if match else None


def rounds_html(rounds: list[dict]) -> str:
    rows = [[num(r["round"]), pct(r.get("accuracy")), nw(interval(r.get("accuracy_ci"))), pct(r.get("macro_f1")),
             num(r.get("loss")), num(r.get("eval_examples")), num(r.get("clients_trained")),
             num(r.get("clients_evaluated")), num(len(r.get("train_failures", [])) + len(r.get("evaluate_failures", []))),
             escape("; ".join(f"{x['client']}: {x['reason']}" for x in r.get("train_rejected", [])))]
            for r in rounds]
    return html_table(["round", "accuracy", "95% interval", "macro-F1", "loss", "test samples", "hospitals trained",
                   "hospitals evaluated", "failures", "updates rejected"], rows)


def summary_html(report: dict) -> str:
    return '<div class="summary"><ul>' + "".join(f"<li>{escape(line)}</li>" for line in plain_summary(report)) \
        + "</ul></div>"


def global_html(report: dict) -> str:
    loss = loss_note(report.get("rounds") or [])
    return "\n".join([plot_global(report["rounds"], report.get("baseline")),
                      f'<p class="warn">{escape(loss)}</p>' if loss else "", rounds_html(report["rounds"])])


# The page's sections between the headline and the authenticity note, in order: (heading, renderer). A renderer
# takes report.json's dict and returns HTML; heading None: it writes its own (or nothing when it has no data).
# A new section: one module with a renderer, one line here.
PageSection = tuple[str | None, Callable[[dict], str]]
PAGE_SECTIONS: list[PageSection] = [
    ("Summary", summary_html),
    ("How well the model works for each group", fairness_html),
    ("Each hospital's test results", hospitals_html),
    ("Privacy spent by each hospital", lambda report: privacy_html(report["privacy"])),
    ("Global model over the rounds", global_html),
    (None, calibration_section),  # ECE per group and reliability diagram (server/report/calibration.py)
    (None, consent_html),  # patients' consent per hospital (server/report/consent_section.py)
    (None, audit_html),  # an audit run's empirical lower bound on epsilon (server/report/audit_section.py)
    (None, fair_dp_html),  # which fairness lever the run used and its privacy cost (server/report/fair_dp_section.py)
]


def sections_html(report: dict) -> str:
    return "\n".join(body if heading is None else f"<h2>{heading}</h2>\n{body}"
                     for heading, body in ((h, render(report)) for h, render in PAGE_SECTIONS))


def unverified_banner(problems: list[str] | None) -> str:
    """First thing on a page built from a report.json that does not verify: its figures may be forged."""
    if problems is None:
        return ""
    items = "".join(f"<li>{escape(p)}</li>" for p in problems[:8])
    return ('<div class="banner unverified" role="alert"><p><strong>UNVERIFIED: this page was built from a '
            'report.json that does not match its signature</strong> (or has none). Its figures may have been '
            'altered after the run; do not rely on them. Restore report.json and report.sig from a trusted copy and '
            f'run <code>fedemo verify RUN_FOLDER</code>.</p><ul>{items}</ul></div>')


def rendered_page(report: dict, report_sha256: str, key_id: str | None) -> str:
    """The page of a report.json that verifies (no UNVERIFIED banner): what ``fedemo verify`` compares an
    unsigned report.html with, byte for byte."""
    return render_html(report, report_sha256, key_id)


def render_html(report: dict, report_sha256: str, key_id: str | None = None,
                unverified: list[str] | None = None) -> str:
    """The whole page; a pure function of the report, its digest, the signing key's id (from report.sig) and,
    for a report.json that does not verify, the problems ``verify_run`` found (``unverified``)."""
    run = report["run"]
    if unverified is not None:
        signer = ("<strong>report.json does NOT verify</strong>"
                  + (f" against the signature of key <code class=\"fp\">{escape(fingerprint(key_id))}</code>"
                     if key_id else " (report.sig is missing)"))
    else:
        signer = (f'signed by the coordinator key with fingerprint (SHA-256 of the Ed25519 public key) '
                  f'<code class="fp" id="key-fingerprint">{escape(fingerprint(key_id))}</code>'
                  if key_id else "<strong>no signature found</strong> (report.sig is missing)")
    config_rows = [[escape(k), escape(json.dumps(v))] for k, v in sorted(report.get("config", {}).items())]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="{DIGEST_META}" content="{report_sha256}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{'UNVERIFIED ' if unverified is not None else ''}FedEmo run report {escape(str(run.get('run_id')))}</title><style>{CSS}</style></head><body>
{unverified_banner(unverified)}
{audit_banner(report)}
<h1>FedEmo run report: {escape(str(run.get('run_id')))}</h1>
{incomplete_banner(run)}
{majority_banner(report)}
<p><small>{escape(str(run.get('task')))} emotion recognition, dataset {escape(str(run.get('dataset')))}, model
{escape(str(run.get('model')))}; report schema {report.get('schema_version')}, generated {escape(str(report.get('generated_at')))};
{signer}.</small></p>
{headline_html(report)}
{sections_html(report)}
<h2>Is this report authentic?</h2>
<p>This page was built from <code>report.json</code> with SHA-256 <code>{report_sha256}</code>. That file is signed
with the coordinator's Ed25519 key (<code>report.sig</code>, public key in <code>report.pub</code>).</p>
<p>Signing key fingerprint: {f'<code class="fp">{escape(fingerprint(key_id))}</code>' if key_id else 'none (report.sig is missing)'}.
Compare it with the fingerprint the coordinator publishes. The coordinator also signs this page's exact bytes
(<code>pages</code> in <code>report.sig</code>), but a page cannot vouch for itself: run
<code>fedemo verify RUN_FOLDER</code> (it prints the same fingerprint) to check that neither file was
changed since the run; it names the file that was.</p>
<details><summary>Run configuration</summary>{html_table(['key', 'value'], config_rows)}</details>
<p><small>Software: {escape(json.dumps(run.get('versions', {}), sort_keys=True))}</small></p>
</body></html>
"""


def write_html(run_dir: Path, key: Ed25519PrivateKey | None = None) -> Path:
    """(Re)build report.html from the run folder's report.json.

    A report.json that does not verify gets a page with the UNVERIFIED banner (never a clean-looking page of
    altered figures). ``key``: the coordinator's key, which signs the page (report.sig ``pages``) when it is
    the key that signed report.json and report.json verifies; without it the page stays verifiable by
    re-rendering (``fedemo verify``).
    """
    run_dir = Path(run_dir)
    data = (run_dir / REPORT_FILE).read_bytes()
    try:  # the signer's key id, for the page; fedemo verify checks it against the signature
        key_id = str(json.loads((run_dir / SIGNATURE_FILE).read_text(encoding="utf-8"))["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        key_id = None
    verdict = verify_run(run_dir)
    html = render_html(json.loads(data.decode("utf-8")), hashlib.sha256(data).hexdigest(), key_id,
                       None if verdict.valid else verdict.problems)
    path = run_dir / HTML_FILE
    page = html.encode("utf-8")
    atomic_write_bytes(path, page)
    if key is not None and verdict.valid:
        sign_page(run_dir, HTML_FILE, page, key)
    return path
