"""The run report: one signed JSON file that answers an auditor's questions without running code.

``build_report`` reads only the run folder (config.json, metrics.jsonl, summary.json, and in simulation the
nodes' ledgers), so a report can be rebuilt for any finished run; each top-level part comes from one
section builder in ``SECTIONS`` (its own module). Schema: docs/report.md; ``SCHEMA_VERSION`` changes
whenever a field changes meaning or disappears.
"""

from __future__ import annotations

import json
import math
import numbers
from logging import ERROR, INFO, WARNING
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.report.baseline import baseline_section, hospitals_section
from server.report.calibration import calibration_report
from server.report.audit_section import audit_part
from server.report.consent_section import consent_part
from server.report.fair_dp_section import fair_dp_part
from server.report.fairness_section import fairness_sections
from server.report.ledger_check import check_ledgers, ledger_path  # noqa: F401 (callers import them from here)
from server.report.privacy_section import DP_FIELDS, evaluation_epsilons, privacy_section  # noqa: F401
from server.report.rounds_section import (CONFIDENCE, ROUND_METRICS, accuracy_interval,  # noqa: F401
                                          overall_noise_variance, round_entry)
from server.report.run_folder import ReportError, RunFolder, read_run  # noqa: F401
from server.report.signing import default_key_path, load_or_create_key, write_signed

SCHEMA_VERSION = 1
REPORT_KIND = "fedemo-run-report"


# --------------------------------------------------------------------------- sections
def run_section(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    """Which run this is: ids, data, task and model, rounds planned and done, and how it ended."""
    config, rounds, summary, run_config = run.config, run.rounds, run.summary, run.run_config
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": {
            "run_id": config.get("run_id", run.run_dir.name),
            "flower_run_id": config.get("flower_run_id"),
            "data_dir": config.get("data_dir"),
            "mode": config.get("mode", "federated"),  # "centralised": the pooled baseline (fedemo baseline)
            "test_split": config.get("test_split"),  # digest of the test rows where recorded (split_digest.py)
            "versions": config.get("versions", {}),
            "task": run_config.get("task"),
            "dataset": run_config.get("dataset"),
            "model": run_config.get("model"),
            "num_clients": run_config.get("num-supernodes"),
            "rounds_planned": run_config.get("num-server-rounds"),
            "rounds_completed": len(rounds) - 1,
            "finished": bool(summary),
            # stopped early (Ctrl-C: summary's "interrupted"; or killed): fewer rounds than planned
            "incomplete": len(rounds) - 1 < int(run_config.get("num-server-rounds") or 0),
            "interrupted": summary.get("interrupted"),
            # the divergence guard stopped the run (server/rounds/divergence_guard.py): why, and whose weights were kept
            "diverged": summary.get("diverged"),
            # a non-finite aggregation ended the run on the last finite model (server/server_app.py)
            "stopped": summary.get("stopped"),
            "elapsed_s": summary.get("elapsed_s"),
        },
        "config": run_config,
        # each resumed part: its Flower run id, start time and what it changed (only keys a resume may change)
        "resumed_parts": config.get("resumed_parts", []),
    }


def rounds_part(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    entries = [round_entry(r) for r in run.rounds]
    return {"initial": entries[0], "final": entries[-1], "rounds": entries}


def baseline_part(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    return {"baseline": baseline_section(run.config, run.rounds[-1], report["final"])}


def hospitals_part(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    return {"hospitals": hospitals_section(run.config, run.rounds)}


def privacy_part(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    return {"privacy": privacy_section(run.config, run.rounds, run.summary, run.run_dir)}


def fairness_part(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    fairness, settings = fairness_sections(run.config, run.rounds, report["baseline"])
    return {"fairness": fairness, "fairness_settings": settings}


def calibration_part(run: RunFolder, report: dict[str, Any]) -> dict[str, Any]:
    return {"calibration": calibration_report(run.rounds)}  # ECE and reliability, overall and per group


# The report's top-level parts, built in this order; each builder gets the run folder and the parts built
# before it, and returns the keys it adds. A new section: one module with a builder, one line here.
Section = Callable[[RunFolder, dict[str, Any]], dict[str, Any]]
SECTIONS: list[Section] = [run_section, rounds_part, baseline_part, hospitals_part, privacy_part, fairness_part,
                           calibration_part, consent_part, audit_part, fair_dp_part]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (canonical JSON has no NaN), numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def build_report(run_dir: Path) -> dict[str, Any]:
    """The report of a run folder, as a plain JSON-ready dict (see docs/report.md)."""
    run_dir = Path(run_dir)
    config, rounds, summary = read_run(run_dir)
    if not rounds:
        raise ReportError(f"{run_dir / 'metrics.jsonl'} holds no round")
    run = RunFolder(run_dir, config, rounds, summary)
    report: dict[str, Any] = {}
    for section in SECTIONS:
        report.update(section(run, report))
    return _clean(report)


# --------------------------------------------------------------------------- writing
def coordinator_key(signing_key: str, runs_dir: str | Path) -> Ed25519PrivateKey:
    """The coordinator's signing key (created on first use), refused when it lies in the runs folder.

    The ServerApp calls this at the start of a run, so an unusable key stops
    the run before any training rather than after it.
    """
    return load_or_create_key(default_key_path(signing_key), forbidden_root=Path(runs_dir).resolve())


def report_at_end_of_run(run_dir: Path, key: Ed25519PrivateKey) -> Path | None:
    """The ServerApp's last step: write the signed report; a failure is logged, never raised.

    By now the weights, metrics and summary are on disk; a report problem
    (e.g. malformed group counts) must not turn a finished run into a crash.
    ``fedemo report --build RUN_DIR`` builds it again once the cause is fixed.
    """
    from flwr.common.logger import log

    try:
        path = write_report(run_dir, key)
    except (ReportError, ValueError, KeyError, TypeError, OSError) as err:
        log(ERROR, "No report written for %s: %s (fix the cause, then `fedemo report --build %s`)",
            run_dir, err, run_dir)
        return None
    log(INFO, "Signed report %s and %s; check them with `fedemo verify %s`", path, path.with_suffix(".html"),
        run_dir)
    check = (json.loads(path.read_text(encoding="utf-8")).get("privacy") or {}).get("ledger_check") or {}
    if check.get("ok") is False:  # signed as it is; `fedemo verify` will not call this run valid (exit 4)
        log(WARNING, "Privacy ledger check FAILED: %s", check.get("status"))
    return path


def write_report(run_dir: Path, key: Ed25519PrivateKey) -> Path:
    """Build, sign and write report.json/.sig/.pub and report.html into the run folder."""
    from server.report.html import write_html

    run_dir = Path(run_dir)
    path = write_signed(run_dir, build_report(run_dir), key)
    write_html(run_dir, key)  # signs the page too (report.sig "pages")
    from flwr.common.logger import log
    from server.report.figures import write_figures  # figures/ and rounds.csv for a paper (not signed: derived)

    try:  # the signed report stands without them: a figure problem is a warning, not "no report"
        write_figures(run_dir, json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, OSError) as err:
        log(WARNING, "Report written, but no figures/ for %s: %s (`fedemo report --build %s` writes them again)",
            run_dir, err, run_dir)
    return path
