"""A run's figures and table for a paper: ``figures/`` in the run folder, rebuilt from its report.

``write_figures`` writes, from the signed report's figures, ``rounds.csv`` (one row per round, the same
columns in every run so tables concatenate), and accuracy, epsilon and per-group accuracy plots as SVG
(text kept as text) and 300-DPI PNG, drawn by ``server.report.plots`` as on the page. The folder is derived,
not signed: ``fedemo report --build RUN`` rewrites it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from server.report import plots

FIGURES_DIR = "figures"
ROUNDS_CSV = "rounds.csv"
PNG_DPI = 300
ROUND_COLUMNS = ("round", "loss", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_f1", "uar",
                 "ccc_valence", "ccc_arousal", "eval_examples", "max_epsilon", "max_eval_epsilon",
                 "client_level_epsilon", "clients_trained", "clients_rejected", "clients_evaluated",
                 "failures", "elapsed_s")


def running_max(histories: list[list[dict[str, Any]]], rounds: list[int]) -> dict[int, float | None]:
    """Per round, the largest cumulative epsilon any client had spent by then (None before any spend)."""
    out: dict[int, float | None] = {}
    for r in rounds:
        spent = [max((h["epsilon"] for h in history if h["round"] <= r and h.get("epsilon") is not None),
                     default=None) for history in histories]
        spent = [e for e in spent if e is not None]
        out[r] = max(spent) if spent else None
    return out


def round_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's rounds as flat rows with ``ROUND_COLUMNS`` (None where the run has no such figure)."""
    rounds = report.get("rounds", [])
    numbers = [r["round"] for r in rounds]
    privacy = report.get("privacy") or {}
    training = running_max([c.get("history", []) for c in privacy.get("clients", [])], numbers)
    evaluation = running_max([c.get("history", []) for c in privacy.get("evaluation_epsilons", [])], numbers)
    rows = []
    for r in rounds:
        ci = r.get("accuracy_ci") or [None, None]
        rows.append({
            **{k: r.get(k) for k in ("round", "loss", "accuracy", "macro_f1", "uar", "ccc_valence", "ccc_arousal",
                                     "eval_examples", "clients_trained", "clients_evaluated", "elapsed_s")},
            "accuracy_ci_low": ci[0], "accuracy_ci_high": ci[1],
            "max_epsilon": training[r["round"]], "max_eval_epsilon": evaluation[r["round"]],
            "client_level_epsilon": r.get("central_dp_epsilon"),
            "clients_rejected": len(r.get("train_rejected") or []),
            "failures": len(r.get("train_failures") or []) + len(r.get("evaluate_failures") or []),
        })
    return rows


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> str:
    """Rows as CSV: a header, then one line per row; None is an empty cell, floats keep full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else (repr(float(row[c])) if isinstance(row[c], float) else row[c])
                         for c in columns])
    return out.getvalue()


def save_figure(fig, path_stem: Path) -> list[Path]:
    """``path_stem``.svg and .png (300 DPI), without the date and software stamps that change every build."""
    plots.integer_rounds(fig)
    svg, png = path_stem.with_suffix(".svg"), path_stem.with_suffix(".png")
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    fig.savefig(png, format="png", dpi=PNG_DPI, metadata={"Software": None})
    plots._plt().close(fig)
    return [svg, png]


def file_stem(name: str) -> str:
    """A group attribute as a file name: letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "attribute"


def write_figures(run_dir: Path, report: dict[str, Any]) -> list[Path]:
    """Write ``run_dir/figures/`` from the run's report; returns the files written."""
    out = Path(run_dir) / FIGURES_DIR
    out.mkdir(exist_ok=True)
    for old in list(out.glob("*.svg")) + list(out.glob("*.png")):  # a rebuild leaves no figure of an older build
        old.unlink()
    written = [out / ROUNDS_CSV]
    written[0].write_text(csv_text(round_rows(report), ROUND_COLUMNS), encoding="utf-8")
    written += save_figure(*plots.global_figure(report.get("rounds", []), report.get("baseline"))[:1],
                           out / "accuracy")
    drawn = plots.epsilon_figure(report.get("privacy") or {})
    if drawn is not None:
        written += save_figure(drawn[0], out / "epsilon")
    final, baseline = report.get("final") or {}, report.get("baseline") or {}
    for attribute, figures in (report.get("fairness") or {}).items():
        drawn = plots.groups_figure(attribute, figures, final.get("accuracy"), baseline.get("majority_rate"))
        if drawn is not None:
            written += save_figure(drawn[0], out / f"groups-{file_stem(attribute)}")
    if (report.get("calibration") or {}).get("overall"):  # the reliability diagram (server/report/calibration.py)
        from server.report.calibration import reliability_figure

        drawn = reliability_figure(report["calibration"])
        if drawn is not None:
            written += save_figure(drawn[0], out / "calibration")
    return written
