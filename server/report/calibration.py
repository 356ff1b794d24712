"""The report's calibration: does "80% sure" mean right 80% of the time, overall and for each group?

DP-SGD can keep accuracy while confidence runs away, so probabilities are part of its cost. From the last
round's summed confidence bins (no test data at the coordinator) this builds report.json's ``calibration``
section (ECE per group, a reliability diagram) and its page section. Under noised counts each ECE carries
``ece_noise_bound`` and the word "noised"; groups under ``MIN_ROWS`` test rows get no ECE.
"""

from __future__ import annotations

from html import escape
from typing import Any

from server.report.html_parts import html_table, nw
from server.report.plots import _legend_outside, _percent_axis, figure_img, subplots

MIN_ROWS = 30


def calibration_report(rounds: list[dict]) -> dict[str, Any] | None:
    """report.json's ``calibration``: the last round's bins, ECE and reliability, overall and per group, and the
    overall ECE of every round that logged bins (None: no round did)."""
    logged = [r for r in rounds if r.get("calibration")]
    if not logged:
        return None
    last = logged[-1]["calibration"]
    groups = {attribute: {group: {**view, "too_few_rows": view["rows"] < MIN_ROWS} for group, view in by_group.items()}
              for attribute, by_group in last["groups"].items()}
    return {"round": logged[-1]["round"], "noised": last["noised"], "bins": last["bins"], "min_rows": MIN_ROWS,
            "overall": last["overall"], "groups": groups,
            "history": [{"round": r["round"], "ece": r["calibration"]["overall"]["ece"],
                         "ece_noise_bound": r["calibration"]["overall"]["ece_noise_bound"]} for r in logged]}


def reliability_figure(calibration: dict[str, Any]):
    """(figure, alt): accuracy per confidence bin against the diagonal of perfect calibration (overall)."""
    rel = calibration["overall"]["reliability"]
    noised = calibration["noised"]
    least = MIN_ROWS if noised else 1  # a noised bin of a few rows reads as anything: left out
    shown = [i for i, rows in enumerate(rel["rows"]) if rows and rows >= least and rel["accuracy"][i] is not None]
    if not shown:
        return None
    fig, ax = subplots(4.2)
    width = 100 * (rel["upper"][0] - rel["lower"][0])
    centres = [100 * (rel["lower"][i] + rel["upper"][i]) / 2 for i in shown]
    ax.bar(centres, [100 * rel["accuracy"][i] for i in shown], width=0.9 * width, color="#1f77b4", alpha=0.75,
           label="accuracy in the bin" + (f" (noised counts; bins of {MIN_ROWS}+ rows)" if noised else ""))
    if not noised:  # a noised bin's mean confidence (noised sum / noised rows) can fall outside its bin
        ax.plot([100 * rel["confidence"][i] for i in shown], [100 * rel["accuracy"][i] for i in shown], "o",
                color="#d62728", label="at the bin's mean confidence")
    ax.plot([0, 100], [0, 100], linestyle="--", color="#444444", linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    _percent_axis(ax, "x")
    _percent_axis(ax)
    ax.set_xlabel("model's confidence (top-class probability)")
    ax.set_ylabel("% right")
    ax.set_title(f"Reliability, round {calibration['round']}")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    overall = calibration["overall"]
    alt = (f"Reliability diagram: accuracy per confidence bin against the diagonal; expected calibration error "
           f"{100 * overall['ece']:.1f} percentage points" if overall.get("ece") is not None else
           "Reliability diagram: accuracy per confidence bin against the diagonal")
    return fig, alt


def plot_reliability(calibration: dict[str, Any]) -> str:
    drawn = reliability_figure(calibration)
    return "" if drawn is None else figure_img(*drawn)


UNREADABLE_BOUND = 0.5  # a noise bound of 50 pp or more: the noised ECE says nothing about the group


def _ece_cell(view: dict[str, Any], noised: bool) -> str:
    if view.get("ece") is None:
        return "n/a"
    if noised and view["ece_noise_bound"] >= UNREADABLE_BOUND:
        return nw(f"too noised to read (&plusmn; {100 * view['ece_noise_bound']:.0f} pp)")
    text = f"{100 * view['ece']:.1f} pp"
    if noised:
        text += f" &plusmn; {100 * view['ece_noise_bound']:.1f}"
    return nw(text)


def calibration_section(report: dict[str, Any]) -> str:
    """The page's calibration section (HTML); '' when the run logged no calibration bins."""
    calibration = report.get("calibration")
    if not calibration:
        return ""
    noised = calibration["noised"]
    overall = calibration["overall"]
    words = ("The expected calibration error (ECE) is how far, on average over the test rows, the model's "
             "confidence in its answer is from how often such answers are right: 0 means \"80% sure\" is right "
             "80% of the time. It is computed from the hospitals' counts per confidence bin, never from "
             "their predictions.")
    caveat = (" <strong>Noised:</strong> the counts carry the evaluation noise that protects each test record; "
              "each ECE is given &plusmn; how far that noise can move it (95%), and the noise tends to raise it "
              "(an ECE near its bound may be noise alone). The test set's own sampling error is not included."
              if noised else "")
    rows = []
    for attribute, by_group in calibration["groups"].items():
        for group, view in by_group.items():
            shown = "too few test rows" if view["too_few_rows"] else _ece_cell(view, noised)
            rows.append([escape(attribute), escape(group), f"{view['rows']:.0f}", shown])
    history = ", ".join(f"round {h['round']}: {100 * h['ece']:.1f} pp" for h in calibration["history"]
                        if h.get("ece") is not None)
    return (f"<h2>Do its probabilities mean what they say? (calibration)</h2>\n"
            f"<p>{words}{caveat}</p>\n"
            f"<p>Overall ECE in round {calibration['round']}: <strong>{_ece_cell(overall, noised)}</strong> "
            f"on {overall['rows']:.0f} test rows.</p>\n"
            f"{plot_reliability(calibration)}\n"
            f"{html_table(['attribute', 'group', 'test rows', 'ECE'], rows)}\n"
            f"<p><small>Overall ECE by round: {escape(history)}.</small></p>")
