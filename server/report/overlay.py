"""Several runs on one figure: ``fedemo plot RUN... --out DIR``, with the mean over seeds and its interval.

Runs are grouped by configuration, ignoring the keys that only name or seed a run (``SEED_KEYS``); per
setting and round: the number of runs, their mean, the 95% t-interval of the mean and the min-max range,
as CSV and as SVG/PNG figures (each run thin, the mean bold, the interval a band).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from server.report import plots
from server.report.figures import ROUND_COLUMNS, csv_text, round_rows, save_figure

SEED_KEYS = ("run-name", "seed", "runs-dir", "signing-key", "resume")  # name or seed a run; not its setting
OVERLAY_METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
SUMMARY_COLUMNS = ("setting", "metric", "round", "n_runs", "mean", "ci_low", "ci_high", "min", "max")
CONFIDENCE = 0.95
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


class OverlayError(RuntimeError):
    """A run folder cannot be plotted (named in the message)."""


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run's report: its signed report.json, else one built in memory from its metrics."""
    from server.report.build import ReportError, build_report

    path = Path(run_dir) / "report.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise OverlayError(f"{path} is not valid JSON: {err}") from err
    try:
        return build_report(Path(run_dir))
    except ReportError as err:
        raise OverlayError(str(err)) from err


def setting_of(report: dict[str, Any]) -> dict[str, Any]:
    """What a run did, less what only names or seeds it."""
    config = {k: v for k, v in (report.get("config") or {}).items() if k not in SEED_KEYS}
    return {"mode": (report.get("run") or {}).get("mode", "federated"), **config}


def setting_names(settings: list[dict[str, Any]]) -> list[str]:
    """Each distinct setting named by the keys that tell it from the others ("dp=true", "centralised")."""
    if len(settings) == 1:
        return ["all runs"]
    keys = sorted({k for s in settings for k in s if len({json.dumps(t.get(k), sort_keys=True) for t in settings}) > 1})
    names = []
    for s in settings:
        parts = ["centralised" if s.get("mode") == "centralised" else "federated"] if "mode" in keys else []
        parts += [f"{k}={json.dumps(s.get(k)) if not isinstance(s.get(k), str) else s.get(k)}"
                  for k in keys if k != "mode"]
        names.append(", ".join(parts[:4]) + (f" (+{len(parts) - 4} keys)" if len(parts) > 4 else ""))
    return names


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float | None, float | None]:
    """The t-interval of the mean of ``values`` (None for fewer than two)."""
    n = len(values)
    if n < 2:
        return None, None
    from scipy.stats import t

    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def summarise(runs: list[list[dict[str, Any]]], metric: str) -> list[dict[str, Any]]:
    """Per round: n_runs, mean, ci_low, ci_high, min, max of ``metric`` over the runs that have it."""
    rounds = sorted({r["round"] for rows in runs for r in rows})
    out = []
    for number in rounds:
        values = [r[metric] for rows in runs for r in rows if r["round"] == number and r.get(metric) is not None]
        if not values:
            continue
        low, high = t_interval(values)
        out.append({"round": number, "n_runs": len(values), "mean": sum(values) / len(values), "ci_low": low,
                    "ci_high": high, "min": min(values), "max": max(values)})
    return out


def overlay_figure(metric: str, settings: list[tuple[str, list[tuple[str, list[dict]]], list[dict]]]):
    """(figure, alt): each run thin, each setting's mean bold with its t-interval band."""
    fig, ax = plots.subplots(4.2)
    alt = []
    for i, (name, runs, summary) in enumerate(settings):
        colour = PALETTE[i % len(PALETTE)]
        for _, rows in runs:
            points = [(r["round"], 100 * r[metric]) for r in rows if r.get(metric) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], color=colour, alpha=0.35, linewidth=1)
        xs = [s["round"] for s in summary]
        label = f"{name}: mean of {len(runs)} run{'s' if len(runs) > 1 else ''}"
        ax.plot(xs, [100 * s["mean"] for s in summary], color=colour, linewidth=2.2, marker="o", markersize=3.5,
                label=label)
        band = [s for s in summary if s["ci_low"] is not None]
        if band:
            ax.fill_between([s["round"] for s in band], [100 * s["ci_low"] for s in band],
                            [100 * s["ci_high"] for s in band], color=colour, alpha=0.18,
                            label=f"{name}: 95% t-interval of the mean")
        if summary:
            last = summary[-1]
            alt.append(f"{name} ({len(runs)} runs) {plots.pct(last['mean'])} at round {last['round']}")
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel(OVERLAY_METRICS[metric])
    ax.set_ylim(0, 100)
    plots._percent_axis(ax)
    ax.set_title(f"{OVERLAY_METRICS[metric].capitalize()} over rounds, thin lines: single runs")
    ax.grid(alpha=0.3)
    plots._legend_outside(ax)
    return fig, f"Line chart of {OVERLAY_METRICS[metric]} over rounds: " + "; ".join(alt) + "."


def overlay(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write overlay.csv, runs.csv and one figure per metric (SVG + PNG) for ``run_dirs`` into ``out_dir``."""
    if not run_dirs:
        raise OverlayError("give at least one run folder")
    loaded = []
    for run_dir in run_dirs:
        report = load_run(Path(run_dir))
        loaded.append((str(run_dir), setting_of(report), round_rows(report)))
    distinct: list[dict[str, Any]] = []
    for _, setting, _ in loaded:
        if setting not in distinct:
            distinct.append(setting)
    names = setting_names(distinct)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_rows, summary_rows, per_metric = [], [], {m: [] for m in OVERLAY_METRICS}
    for setting, name in zip(distinct, names):
        members = [(path, rows) for path, s, rows in loaded if s == setting]
        runs_rows += [{"setting": name, "run": path, **row} for path, rows in members for row in rows]
        for metric in OVERLAY_METRICS:
            summary = summarise([rows for _, rows in members], metric)
            summary_rows += [{"setting": name, "metric": metric, **s} for s in summary]
            per_metric[metric].append((name, members, summary))
    written = [out_dir / "overlay.csv", out_dir / "runs.csv"]
    written[0].write_text(csv_text(summary_rows, SUMMARY_COLUMNS), encoding="utf-8")
    written[1].write_text(csv_text(runs_rows, ("setting", "run", *ROUND_COLUMNS)), encoding="utf-8")
    for metric, settings in per_metric.items():
        fig, _ = overlay_figure(metric, settings)
        written += save_figure(fig, out_dir / metric.replace("_", "-"))
    return written
