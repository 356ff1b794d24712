"""The report's audit section: an audit run's empirical lower bound on epsilon beside the accountant's claim.

Present only in a run folder with ``audit.json`` (written by ``fedemo audit``, simulations/audit/run.py):
the canary count m, guesses and correct guesses, significance and delta, the lower bound, the ceiling
that m canaries allow (so a low bound is not read as proof of privacy), the claimed epsilon, and whether
the bound stays at or below the claim. The report signs the figures and the SHA-256 of audit.json (every
canary's score and coin), so neither can be changed afterwards unseen. An audit run is a research run:
its canaries are synthetic, and the page says so first.
"""

from __future__ import annotations

import hashlib
import json
from html import escape
from typing import Any

from shared_models.privacy_audit.one_run_bound import AUDIT_FILE

FIELDS = ("mode", "mechanism", "adjacency", "score", "m", "how_k_chosen", "guesses", "correct", "significance",
          "significance_per_k", "delta", "lower_bound", "ceiling", "claimed_epsilon", "passed")
CEILING_NOTE = ("the bound can never exceed the ceiling m canaries allow (every guess right: about 4.6 with "
                "m = 1000 at significance 0.05), so a bound far below the claim does not prove the claim holds; "
                "a bound above the claim proves the implementation does not meet it")


def audit_part(run, report: dict[str, Any]) -> dict[str, Any]:
    """``server.report.build``'s section builder: the ``audit`` key, only for an audit run."""
    path = run.run_dir / AUDIT_FILE
    if not path.is_file():
        return {}
    raw = path.read_bytes()
    audit = json.loads(raw)
    section = {key: audit.get(key) for key in FIELDS}
    section.update({"audit_run": True, "file": AUDIT_FILE, "file_sha256": hashlib.sha256(raw).hexdigest(),
                    "note": CEILING_NOTE})
    return {"audit": section}


def audit_banner(report: dict[str, Any]) -> str:
    """The page's first words for an audit run (empty otherwise)."""
    audit = report.get("audit")
    if not audit:
        return ""
    failed = audit.get("passed") is False
    verdict = (" <strong>The audit FAILED: the empirical lower bound is above the claimed epsilon.</strong>"
               if failed else "")
    return (f'<div class="banner{" unverified" if failed else ""}" role="note"><p><strong>AUDIT RUN</strong>: '
            "this run trained with synthetic canaries to test its privacy claim; its model is not for use."
            f"{verdict}</p></div>")


def audit_html(report: dict[str, Any]) -> str:
    """The page's audit section (its own heading), or nothing outside an audit run."""
    audit = report.get("audit")
    if not audit:
        return ""
    claim = audit.get("claimed_epsilon")
    claim_text = "none (no DP in this run)" if claim is None else f"{claim:.2f}"
    verdict = "no claim to test" if claim is None else ("passed: bound at or below the claim" if audit["passed"]
                                                        else "<strong>FAILED: bound above the claim</strong>")
    rows = [("mechanism audited", escape(str(audit["mechanism"]))), ("adjacency", escape(str(audit["adjacency"]))),
            ("score", escape(str(audit["score"]))), ("canaries (m)", str(audit["m"])),
            ("how k was chosen", escape(str(audit["how_k_chosen"]))),
            ("guesses / correct", f"{audit['guesses']} / {audit['correct']}"),
            ("significance, delta", f"{audit['significance']} (per k: {audit['significance_per_k']:.4g}), "
                                    f"{audit['delta']:.3g}"),
            ("empirical lower bound on epsilon", f"<strong>{audit['lower_bound']:.2f}</strong>"),
            ("ceiling with m canaries", f"{audit['ceiling']:.2f}"),
            ("accountant's epsilon (claimed)", claim_text), ("verdict", verdict)]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return (f"<h2>Empirical privacy audit (one run)</h2>\n<p>An audit run (Steinke, Nasr and Jagielski 2023): "
            f"{escape(CEILING_NOTE)}. Every canary's score and coin: <code>{AUDIT_FILE}</code> (SHA-256 "
            f"<code>{audit['file_sha256'][:16]}</code>...).</p>\n<table>{body}</table>")
