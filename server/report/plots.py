"""The report page's figures: matplotlib (Agg backend) drawn to base64 PNGs, so the page stays one file."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MAX_LEGEND_CLIENTS = 12  # above this many clients the epsilon plot names only the largest spender


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ordered_groups(figures: dict) -> list[tuple[str, dict]]:
    """An attribute's groups in the dataset's own order (``group_order``; JSON keys are sorted)."""
    groups = figures.get("groups", {})
    order = [g for g in figures.get("group_order", []) if g in groups]
    return [(g, groups[g]) for g in order + sorted(g for g in groups if g not in order)]


def figure_img(fig) -> str:
    """The figure as an ``<img>`` with its PNG inlined, so a page stays one self-contained file; closes it."""
    for ax in fig.axes:
        if ax.get_xlabel().startswith("round"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


# --------------------------------------------------------------------------- plots
def plot_global(rounds: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [r["round"] for r in rounds if r.get("accuracy") is not None]
    ax.plot(xs, [r["accuracy"] for r in rounds if r.get("accuracy") is not None], marker="o", label="accuracy")
    cis = [(r["round"], r["accuracy_ci"]) for r in rounds if r.get("accuracy_ci")]
    if cis:
        ax.fill_between([c[0] for c in cis], [c[1][0] for c in cis], [c[1][1] for c in cis], alpha=0.2,
                        label="95% interval")
    ax.plot(xs, [r.get("macro_f1") for r in rounds if r.get("accuracy") is not None], marker=".", linestyle="--",
            label="macro-F1")
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylim(0, 1)
    ax.set_title("Global model on all hospitals' test data")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return figure_img(fig)


def plot_groups(attribute: str, figures: dict, overall: float | None) -> str:
    shown = [(g, v) for g, v in ordered_groups(figures) if not v.get("suppressed")]
    if not shown:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1.2))
    acc = [v["accuracy"] for _, v in shown]
    lo = [max(0.0, v["accuracy"] - v["accuracy_ci"][0]) for _, v in shown]
    hi = [max(0.0, v["accuracy_ci"][1] - v["accuracy"]) for _, v in shown]
    ax.barh(range(len(shown)), acc, xerr=[lo, hi], capsize=4, color="#4c78a8", alpha=0.85)
    ax.set_yticks(range(len(shown)), [f"{g} (n={v['n']})" for g, v in shown])
    if overall is not None:
        ax.axvline(overall, color="black", linestyle=":", label=f"all groups {pct(overall)}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (bars: 95% interval)")
    ax.set_title(f"Accuracy per {attribute} group")
    ax.invert_yaxis()
    return figure_img(fig)


def plot_epsilon(privacy: dict) -> str:
    clients = privacy.get("clients", [])
    if not clients:
        return ""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    top = max(clients, key=lambda c: c.get("epsilon") or 0.0)
    for client in clients:
        rounds = [h["round"] for h in client["history"]]
        eps = [h["epsilon"] for h in client["history"]]
        labelled = len(clients) <= MAX_LEGEND_CLIENTS or client is top
        ax.plot(rounds, eps, marker=".", alpha=0.9 if labelled else 0.35,
                label=(f"hospital {client['client_id']}" + ("" if len(clients) <= MAX_LEGEND_CLIENTS else " (largest)"))
                if labelled else None)
    budgets = {c.get("budget") for c in clients if c.get("budget") is not None}
    for budget in sorted(budgets):
        ax.axhline(budget, color="red", linestyle="--", label=f"budget {budget:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.set_ylim(bottom=0)
    ax.set_title("Privacy spent by each hospital")
    ax.legend(fontsize="small", loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    return figure_img(fig)


def plot_gaps(fairness: dict, threshold: float | None) -> str:
    series = {a: f.get("history", []) for a, f in fairness.items()
              if any(h.get("accuracy_gap") is not None for h in f.get("history", []))}
    if not series:
        return ""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for attribute, history in series.items():
        points = [(h["round"], h["accuracy_gap"]) for h in history if h.get("accuracy_gap") is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=attribute)
    if threshold is not None:
        ax.axhline(threshold, color="red", linestyle="--", label=f"flag threshold {threshold:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy gap (best - worst group)")
    ax.set_ylim(bottom=0)
    ax.set_title("Gap between groups over rounds")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return figure_img(fig)


# --------------------------------------------------------------------------- text
