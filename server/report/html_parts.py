"""The report page's formatting (one unit per kind of figure) and its at-a-glance blocks.

Rates (accuracy, macro-F1, recall) in %, differences of rates (gaps) in
percentage points (pp), ratios as plain ratios; the JSON keeps fractions
(0-1). The blocks: the incomplete-run and no-better-than-the-majority-class
banners, the headline (accuracy beside the majority and chance rates) and
each hospital's test results.
"""

from __future__ import annotations

from html import escape
from typing import Any

from server.report.plots import pct


def interval(ci: list[float] | None) -> str:
    """A rate's interval, in %."""
    return "" if not ci else f"{100 * ci[0]:.1f}% to {100 * ci[1]:.1f}%"


def pp_interval(ci: list[float] | None) -> str:
    """A difference's interval, in percentage points."""
    return "" if not ci else f"{100 * ci[0]:.1f} to {100 * ci[1]:.1f} pp"


def signed_pp(x: float | None) -> str:
    """A signed difference of rates in percentage points, "+1.7 pp" / "-3.0 pp"."""
    return "" if x is None else f"{100 * x:+.1f} pp"


def ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def ratio_interval(ci: list[float] | None) -> str:
    return "" if not ci else f"{ci[0]:.2f} to {ci[1]:.2f}"


def eps(x: Any) -> str:
    """An epsilon, always 2 decimals ("7.99"): one precision everywhere on the page."""
    return "n/a" if x is None else f"{float(x):.2f}"


def delta(x: Any) -> str:
    """A delta in scientific notation with 2 significant digits ("6.2e-05"), never broken across lines."""
    return "n/a" if x is None else nw(f"{float(x):.1e}")


LOSS_RISE = 1.25  # the loss "climbs" when its last value is this many times its lowest after training began
ACCURACY_HOLDS = 0.03  # ... while the accuracy is within this of its value at the loss's lowest round


def loss_note(rounds: list[dict]) -> str | None:
    """Plain words for a test loss that climbs while accuracy holds: the predicted probabilities grew
    overconfident (right as often, but the wrong answers come with high confidence), so a probability the
    model gives does not mean what it says. None when the loss does not behave so (or was not reported)."""
    trained = [r for r in rounds if r.get("round", 0) >= 1 and r.get("loss") is not None
               and r.get("accuracy") is not None]
    if len(trained) < 2:
        return None
    low = min(trained, key=lambda r: r["loss"])
    last = trained[-1]
    if last is low or last["loss"] < LOSS_RISE * low["loss"] or last["accuracy"] < low["accuracy"] - ACCURACY_HOLDS:
        return None
    return (f"The test loss climbed from {low['loss']:.2f} (round {low['round']}) to {last['loss']:.2f} (round "
            f"{last['round']}) while accuracy held ({pct(low['accuracy'])} then {pct(last['accuracy'])}). The model "
            "picks the right emotion as often, but its predicted probabilities have grown overconfident: its wrong "
            "answers come with high confidence, so a probability it gives (\"80% angry\") does not mean 80%. "
            "Use its decisions, not its probabilities, and check the calibration figures where the report has them.")


def nw(text: str) -> str:
    """A table cell's figure kept on one line ("50.9% to 60.5%" never breaks inside)."""
    return f'<span class="nw">{text}</span>' if text else ""


def fingerprint(key_id: str) -> str:
    """The key id (SHA-256 of the raw public key, hex), exactly as ``fedemo verify`` prints it."""
    return escape(key_id)


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 0.1 and x != 0 else f"{x:.{digits}f}"
    return escape(str(x))


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table whose headers are escaped here and whose cells are HTML already (callers escape or format them)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def hospitals_html(report: dict) -> str:
    """Each hospital's test accuracy and sample count, as it reported them."""
    hospitals = report.get("hospitals") or {}
    clients = hospitals.get("clients") or []
    if not clients:
        return "<p>No hospital reported evaluation counts in this run.</p>"
    parts = [f"<p>Round {clients[0].get('round')}, each hospital's own held-out test rows"
             + ("." if hospitals.get("counts_noised") else f": {escape(str(hospitals.get('note', '')))}.") + "</p>"]
    if hospitals.get("counts_noised"):
        parts.append('<p class="warn"><strong>Noised:</strong> under <code>eval-dp-noise-multiplier</code> each '
                     "hospital adds differential-privacy noise to the counts it reports; the figures below are those "
                     "noised counts, not its exact results, and have no interval.</p>")
    rows = [[escape(str(c["client_id"])), num(c.get("num_examples")), pct(c.get("accuracy")),
             nw(interval(c.get("accuracy_ci"))) or ("noised: no interval" if c.get("counts_noised") else ""),
             pct(c.get("initial_accuracy")), num(c.get("skipped"))] for c in clients]
    parts.append(html_table(["hospital", "test samples", "accuracy", "95% interval", "before training",
                             "skipped samples"], rows))
    return "\n".join(parts)


def headline_html(report: dict) -> str:
    """Accuracy beside what a model that learned nothing scores, first thing on the page."""
    final, baseline = report["final"], report.get("baseline") or {}
    cells = [f"<div><span>accuracy (round {final.get('round')})</span><b>{pct(final.get('accuracy'))}</b>"
             f"<small>95% interval {interval(final.get('accuracy_ci')) or 'n/a'}</small></div>"]
    if baseline.get("majority_rate") is not None:
        cells.append(f"<div><span>majority class: always '{escape(str(baseline['majority_class']))}'</span>"
                     f"<b>{pct(baseline['majority_rate'])}</b><small>of {num(baseline.get('n'))} test samples</small>"
                     "</div>")
    if baseline.get("chance_rate") is not None:
        cells.append(f"<div><span>chance (uniform guess)</span><b>{pct(baseline['chance_rate'])}</b>"
                     "<small>1 in 7 emotions</small></div>")
    cells.append(f"<div><span>macro-F1</span><b>{pct(final.get('macro_f1'))}</b><small>mean over emotions</small></div>")
    privacy = report.get("privacy") or {}
    if privacy.get("sample_level_dp"):  # both epsilons a hospital spent: training records and test records
        clients = privacy.get("clients") or []
        deltas = [c["delta"] for c in clients if c.get("delta") is not None]
        budgets = sorted({c["budget"] for c in clients if c.get("budget") is not None})
        cells.append(f"<div><span>training epsilon (largest)</span><b>{eps(privacy.get('max_epsilon'))}</b>"
                     "<small>replace one training record"
                     + (f"; budget {', '.join(eps(b) for b in budgets)}" if budgets else "")
                     + (f"; delta up to {delta(max(deltas))}" if deltas else "") + "</small></div>")
        eval_epsilon = privacy.get("max_eval_epsilon")
        cells.append(f"<div><span>evaluation-count epsilon (largest)</span><b>{eps(eval_epsilon)}</b><small>"
                     + ("add or remove one test record" if eval_epsilon is not None else "counts NOT noised")
                     + "</small></div>")
    central = privacy.get("client_level_dp") or {}
    if central.get("enabled"):
        spent = central.get("accounting") or {}
        cells.append(f"<div><span>client-level epsilon</span><b>{eps(spent.get('epsilon'))}</b><small>replace one "
                     f"hospital; delta {delta(spent.get('delta'))}</small></div>")
    if not privacy.get("sample_level_dp") and not central.get("enabled"):
        cells.append("<div><span>privacy</span><b>no DP</b><small>no epsilon covers this run</small></div>")
    note = ("" if not baseline.get("counts_noised") else
            "<p><small>The test counts carry differential-privacy noise, so these rates are approximate.</small></p>")
    return f'<div class="headline">{"".join(cells)}</div>{note}'


def majority_banner(report: dict) -> str:
    baseline = report.get("baseline") or {}
    if not baseline.get("no_better_than_majority"):
        return ""
    head, _, rest = str(baseline.get("warning") or "No better than the majority class.").partition(": ")
    return f'<p class="banner" role="alert"><strong>{escape(head)}:</strong> {escape(rest)}</p>'



def incomplete_banner(run: dict) -> str:
    """A run that stopped before its planned rounds, or on a failure, says so first: its figures are not the
    planned run's."""
    ended = run.get("diverged") or run.get("stopped")
    if ended:  # the divergence guard, or a non-finite aggregation (fedemo verify: exit 6)
        kept = ended.get("rolled_back_to_round")
        return (f'<p class="banner" role="alert"><strong>Run stopped on a failure: '
                f'{"it diverged" if run.get("diverged") else "its model was not finite"}</strong> '
                f'({escape(str(ended.get("reason")))}). '
                + (f"The saved model is round {kept}'s. " if kept is not None else "")
                + 'This is not the planned run; do not use its model.</p>')
    if not run.get("incomplete"):
        return ""
    interrupted = run.get("interrupted") or {}
    how = "interrupted" if interrupted else "the coordinator stopped without writing its summary: killed or crashed"
    resume = interrupted.get("resume") if isinstance(interrupted, dict) else None
    return (f'<p class="banner" role="alert"><strong>Incomplete run: {run.get("rounds_completed")} of '
            f'{run.get("rounds_planned")} planned rounds done</strong> ({how}). Every figure on this page is that '
            f'of round {run.get("rounds_completed")}, not of the planned run. Continue it with '
            f'<code>{escape(resume or "fedemo simulate --resume RUN_FOLDER")}</code>'
            + ("" if resume else " (when the folder holds a checkpoint)") + '.</p>')
