"""What the audit tests check of a caught fault: the verdict in audit.json, report.json and the page, all signed."""

from __future__ import annotations

import json
from pathlib import Path


def assert_failed_audit_is_reported_and_signed(broken: dict) -> None:
    """``broken``: audit.json of a run whose bound exceeded its claim, with ``run_dir`` added."""
    assert broken["lower_bound"] > 1.0 and broken["passed"] is False
    run_dir = Path(broken["run_dir"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["audit"]["passed"] is False and report["audit"]["lower_bound"] == broken["lower_bound"]
    assert "The audit FAILED" in (run_dir / "report.html").read_text()
    from simulations.cli import main

    assert main(["verify", str(run_dir)]) == 0  # the audit's section is signed data: the report still verifies
