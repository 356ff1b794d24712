"""The report's figures, drawn once with matplotlib (Agg backend) and used twice.

Each ``*_figure`` function returns a matplotlib figure and its alt text: the
report page inlines it as a base64 PNG (``plot_*``, so the page stays one
file), and ``server.report.figures`` saves the same figure as SVG and
300-DPI PNG into the run's ``figures/`` folder for a paper. Figures are
narrow (``FIG_WIDTH`` inches) with their legend below the plot and
11-point text, so a phone's 390-px-wide screen shows them without text
too small to read.
"""

from __future__ import annotations

import base64
import functools
import io
from html import escape

FIG_WIDTH = 5.6  # inches; at the page's 96 DPI a 538-px image, shown at 70% on a 390-px phone screen
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10,
         "svg.fonttype": "none",  # SVG text stays text: editable, searchable, set in the paper's font
         "svg.hashsalt": "fedemo"}  # element ids in an SVG are the same from one build to the next


@functools.cache
def _plt():
    """matplotlib's pyplot on the Agg backend, imported on the first figure: ``fedemo verify`` and the
    CLI load this package without drawing anything, and matplotlib costs about a second to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def subplots(height: float, width: float = FIG_WIDTH):
    """A figure and its axes, laid out so the legend below the plot (``_legend_outside``) is never cut."""
    return _plt().subplots(figsize=(width, height), layout="constrained")


def _ticker():
    _plt()
    import matplotlib.ticker

    return matplotlib.ticker


MAX_LEGEND_CLIENTS = 8  # distinct epsilon lines named in the legend; any more are drawn grey


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ordered_groups(figures: dict) -> list[tuple[str, dict]]:
    """An attribute's groups in the dataset's own order (``group_order``; JSON keys are sorted)."""
    groups = figures.get("groups", {})
    order = [g for g in figures.get("group_order", []) if g in groups]
    return [(g, groups[g]) for g in order + sorted(g for g in groups if g not in order)]


def pp(x: float | None) -> str:
    """A difference of two rates, in percentage points."""
    return "n/a" if x is None else f"{100 * x:.1f} pp"


def integer_rounds(fig) -> None:
    """Round axes tick whole rounds only."""
    for ax in fig.axes:
        if ax.get_xlabel().startswith("round"):
            ax.xaxis.set_major_locator(_ticker().MaxNLocator(integer=True))


def figure_img(fig, alt: str) -> str:
    """The figure as an ``<img>`` with its PNG inlined and ``alt`` text, so a page stays one file; closes it."""
    integer_rounds(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return (f'<img alt="{escape(alt, quote=True)}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">')


def _percent_axis(ax, axis: str = "y") -> None:
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(_ticker().PercentFormatter(xmax=100, decimals=0))


def _legend_outside(ax, **kwargs) -> None:
    """The legend below the plot, where it hides no point and leaves the plot the figure's full width."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        short = max(len(label) for label in labels) <= 30  # two short columns still fit the figure's width
        ax.figure.legend(handles, labels, loc="outside lower center", ncols=2 if short and len(labels) > 1 else 1,
                         frameon=False, **kwargs)


def _html(drawn) -> str:
    """``plot_*``: a ``*_figure`` result as the page's inline image ('' when there is nothing to draw)."""
    return "" if drawn is None else figure_img(*drawn)


# --------------------------------------------------------------------------- plots
def plot_global(rounds: list[dict], baseline: dict | None = None) -> str:
    return _html(global_figure(rounds, baseline))


def global_figure(rounds: list[dict], baseline: dict | None = None):
    """(figure, alt): accuracy with its 95% band and macro-F1 over rounds, beside majority and chance."""
    baseline = baseline or {}
    fig, ax = subplots(3.9)
    shown = [r for r in rounds if r.get("accuracy") is not None]
    xs = [r["round"] for r in shown]
    ax.plot(xs, [100 * r["accuracy"] for r in shown], marker="o", color="#1f77b4", label="accuracy")
    cis = [(r["round"], r["accuracy_ci"]) for r in shown if r.get("accuracy_ci")]
    if cis:
        ax.fill_between([c[0] for c in cis], [100 * c[1][0] for c in cis], [100 * c[1][1] for c in cis],
                        color="#1f77b4", alpha=0.2, label="accuracy 95% interval")
    f1 = [(r["round"], r["macro_f1"]) for r in shown if r.get("macro_f1") is not None]
    if f1:
        ax.plot([p[0] for p in f1], [100 * p[1] for p in f1], marker=".", linestyle="--", color="#ff7f0e",
                label="macro-F1")
    if baseline.get("majority_rate") is not None:
        ax.axhline(100 * baseline["majority_rate"], color="#444444", linestyle=":", linewidth=1.5,
                   label=f"always '{baseline['majority_class']}' (majority) {pct(baseline['majority_rate'])}")
    if baseline.get("chance_rate") is not None:
        ax.axhline(100 * baseline["chance_rate"], color="#999999", linestyle="-.", linewidth=1,
                   label=f"chance (1/7) {pct(baseline['chance_rate'])}")
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("% of test samples")
    ax.set_ylim(0, 100)
    _percent_axis(ax)
    ax.set_title("Global model on all hospitals' test data")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    last = shown[-1] if shown else {}
    alt = (f"Line chart of the global model's accuracy and macro-F1 over rounds 0 to {xs[-1] if xs else 0}; "
           f"final accuracy {pct(last.get('accuracy'))}"
           + (f", against {pct(baseline.get('majority_rate'))} for always predicting the majority class and "
              f"{pct(baseline.get('chance_rate'))} for chance" if baseline.get("majority_rate") is not None else "")
           + ".")
    return fig, alt


def plot_groups(attribute: str, figures: dict, overall: float | None, majority: float | None = None) -> str:
    return _html(groups_figure(attribute, figures, overall, majority))


def groups_figure(attribute: str, figures: dict, overall: float | None, majority: float | None = None):
    """(figure, alt) of each reported group's accuracy with its 95% interval, or None when none is reported."""
    shown = [(g, v) for g, v in ordered_groups(figures) if not v.get("suppressed") and v.get("accuracy") is not None]
    if not shown:
        return None
    fig, ax = subplots(0.45 * len(shown) + 2.0)
    acc = [100 * v["accuracy"] for _, v in shown]
    lo = [max(0.0, 100 * (v["accuracy"] - v["accuracy_ci"][0])) for _, v in shown]
    hi = [max(0.0, 100 * (v["accuracy_ci"][1] - v["accuracy"])) for _, v in shown]
    ax.barh(range(len(shown)), acc, xerr=[lo, hi], capsize=4, color="#4c78a8", alpha=0.85)
    ax.set_yticks(range(len(shown)), [f"{g} (n={v['n']})" for g, v in shown])
    if overall is not None:
        ax.axvline(100 * overall, color="black", linestyle=":", label=f"all groups {pct(overall)}")
    if majority is not None:
        ax.axvline(100 * majority, color="#999999", linestyle="-.", label=f"majority class (all groups) {pct(majority)}")
    if overall is not None or majority is not None:
        _legend_outside(ax)
    ax.set_xlim(0, 100)
    _percent_axis(ax, "x")
    ax.set_xlabel("accuracy (error bars: 95% interval)")
    ax.set_title(f"Accuracy per {attribute} group")
    ax.invert_yaxis()
    alt = (f"Bar chart of accuracy per {attribute} group with 95% intervals: "
           + "; ".join(f"{g} {pct(v['accuracy'])} (n={v['n']})" for g, v in shown) + ".")
    return fig, alt


def plot_group_history(attribute: str, figures: dict) -> str:
    """Each reported group's accuracy over the rounds (suppressed groups are not drawn)."""
    history = [h for h in figures.get("history", []) if h.get("groups")]
    order = [g for g, v in ordered_groups(figures) if not v.get("suppressed")]
    order += sorted({g for h in history for g in h["groups"]} - set(order))
    if not history or not order:
        return ""
    fig, ax = subplots(3.9)
    styles = ["-", "--", "-.", ":"]
    for i, group in enumerate(order):
        points = [(h["round"], h["groups"][group]["accuracy"]) for h in history if group in h["groups"]]
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", markersize=4,
                linestyle=styles[i // 10 % len(styles)], label=group)
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 100)
    _percent_axis(ax)
    ax.set_title(f"Accuracy per {attribute} group over rounds")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    last = history[-1]
    alt = (f"Line chart of accuracy per {attribute} group over rounds; in round {last['round']}: "
           + "; ".join(f"{g} {pct(v['accuracy'])}" for g, v in last["groups"].items()) + ".")
    return figure_img(fig, alt)


def same_lines(clients: list[dict]) -> list[list[dict]]:
    """Hospitals whose epsilon history is identical (same rounds, same figures) share one line."""
    lines: dict[tuple, list[dict]] = {}
    for client in clients:
        key = tuple((h["round"], None if h.get("epsilon") is None else round(h["epsilon"], 9))
                    for h in client.get("history", []))
        lines.setdefault(key, []).append(client)
    return list(lines.values())


def _names(clients: list[dict], limit: int = 6) -> str:
    ids = [str(c["client_id"]) for c in clients]
    return ", ".join(ids) if len(ids) <= limit else ", ".join(ids[:limit]) + f", ... ({len(ids) - limit} more)"


def plot_epsilon(privacy: dict) -> str:
    return _html(epsilon_figure(privacy))


def epsilon_figure(privacy: dict):
    """(figure, alt) of each hospital's cumulative epsilon over rounds (identical ones share a line), or None."""
    clients = [c for c in privacy.get("clients", []) if c.get("history")]
    if not clients:
        return None
    fig, ax = subplots(3.9)
    lines = sorted(same_lines(clients), key=lambda group: -(group[0].get("epsilon") or 0.0))
    palette = _plt().get_cmap("tab10").colors
    colours = [c for i, c in enumerate(palette) if i not in (3, 7)]  # no red, no grey: grey is for unnamed lines
    top = 0.0
    for i, group in enumerate(lines):
        history = group[0]["history"]
        eps = [h["epsilon"] for h in history]
        top = max([top] + [e for e in eps if e is not None])
        labelled = i < MAX_LEGEND_CLIENTS
        if len(group) == 1:
            label = f"hospital {group[0]['client_id']}"
        else:
            label = f"hospitals {_names(group)}: {len(group)} share this line"
        ax.plot([h["round"] for h in history], eps, marker="o", markersize=4,
                color=colours[i % len(colours)] if labelled else "#bbbbbb", alpha=0.9 if labelled else 0.5,
                zorder=3 if labelled else 2, label=label if labelled else None)
    if len(lines) > MAX_LEGEND_CLIENTS:
        ax.plot([], [], color="#bbbbbb", label=f"{sum(map(len, lines[MAX_LEGEND_CLIENTS:]))} more hospitals, smaller epsilon (grey)")
    budgets = sorted({c.get("budget") for c in clients if c.get("budget") is not None})
    for budget in budgets:
        ax.axhline(budget, color="black", linestyle="--", linewidth=1.5, label=f"budget {budget:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.set_ylim(0, 1.15 * max([top] + budgets) or 1.0)  # the budget line inside the frame, with room above
    ax.set_title("Privacy spent by each hospital")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    shared = [g for g in lines if len(g) > 1]
    alt = (f"Line chart of the cumulative epsilon of {len(clients)} hospitals over rounds, in {len(lines)} distinct "
           f"line(s)" + (f" ({'; '.join(f'{len(g)} hospitals share one line' for g in shared)})" if shared else "")
           + f"; largest epsilon {top:.3g}"
           + (f", budget {', '.join(f'{b:g}' for b in budgets)} (dashed black line)" if budgets else "") + ".")
    return fig, alt


def plot_gaps(fairness: dict, threshold: float | None) -> str:
    series = {a: f.get("history", []) for a, f in fairness.items()
              if any(h.get("accuracy_gap") is not None for h in f.get("history", []))}
    if not series:
        return ""
    fig, ax = subplots(3.9)
    top = 0.0
    for attribute, history in series.items():
        points = [(h["round"], 100 * h["accuracy_gap"]) for h in history if h.get("accuracy_gap") is not None]
        if points:
            top = max([top] + [p[1] for p in points])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=attribute)
    if threshold is not None:
        ax.axhline(100 * threshold, color="black", linestyle="--", label=f"flag threshold {100 * threshold:.1f} pp")
        top = max(top, 100 * threshold)
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("accuracy gap, percentage points")
    ax.set_ylim(0, 1.15 * top or 1.0)
    ax.set_title("Gap between best and worst group over rounds")
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    alt = ("Line chart of the accuracy gap (best minus worst group, percentage points) over rounds for "
           + ", ".join(series) + (f"; flag threshold {100 * threshold:.1f} pp" if threshold is not None else "")
           + ".")
    return figure_img(fig, alt)
