"""Reading a run folder: config.json, metrics.jsonl and summary.json, as the report and the CLI need them.

A report is rebuilt from these files alone, so a missing or malformed file is a
``ReportError`` that names it (never a traceback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ReportError(RuntimeError):
    """The run folder lacks what a report needs (named in the message)."""


@dataclass(frozen=True)
class RunFolder:
    """What every report section is built from: the folder and its three files, read once."""

    run_dir: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def run_config(self) -> dict[str, Any]:
        return self.config.get("run_config", {})


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """config.json, the metrics.jsonl rounds and summary.json (empty when the run did not finish)."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    if not config_path.is_file():
        raise ReportError(f"{config_path} is missing: {run_dir} is not a FedEmo run folder")
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path} is missing: the run logged no round")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        rounds = []
        for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                rounds.append(json.loads(line))
    except ValueError as err:
        raise ReportError(f"{run_dir}: config.json or metrics.jsonl line {number} is not valid JSON ({err})") from err
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    if config.get("mode") == "centralised":  # an older `fedemo baseline` numbered its lines by epoch only
        rounds = [{"round": r["epoch"], **r} if "round" not in r and "epoch" in r else r for r in rounds]
    return config, rounds, summary
