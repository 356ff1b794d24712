"""The page's summary: the report's findings in plain sentences, most important first."""

from __future__ import annotations

from server.report.difference_rule import VERDICTS
from server.report.html_parts import eps, interval, loss_note, pp_interval
from server.report.plots import pct, pp


def plain_summary(report: dict) -> list[str]:
    """The findings in plain sentences, most important first."""
    run, final, privacy = report["run"], report["final"], report["privacy"]
    lines = []
    baseline = report.get("baseline") or {}
    if baseline.get("warning"):
        lines.append("WARNING: " + baseline["warning"])
    if run.get("incomplete"):
        lines.append(f"This run is INCOMPLETE: it stopped after {run.get('rounds_completed')} of "
                     f"{run.get('rounds_planned')} planned rounds; every figure is that of round "
                     f"{run.get('rounds_completed')}.")
    n = final.get("eval_examples") or 0
    correct = sum(final["confusion"][i][i] for i in range(len(final["confusion"]))) if final.get("confusion") else None
    lines.append(
        f"After {run.get('rounds_completed')} training round{'' if run.get('rounds_completed') == 1 else 's'} with {run.get('num_clients')} hospitals, the shared "
        f"{run.get('task')} emotion model recognised {correct if correct is not None else '?'} of {n} held-out "
        f"test samples correctly: accuracy {pct(final.get('accuracy'))}"
        + (f" (95% interval {interval(final.get('accuracy_ci'))})" if final.get("accuracy_ci") else "")
        + f"; before training it was {pct(report['initial'].get('accuracy'))}."
        + (f" Always predicting the most common emotion ('{baseline['majority_class']}') would score "
           f"{pct(baseline['majority_rate'])}, a uniform random guess {pct(baseline.get('chance_rate'))}."
           if baseline.get("majority_rate") is not None else ""))
    if loss_note(report.get("rounds") or []):
        lines.append(loss_note(report["rounds"]))
    if privacy.get("sample_level_dp") and privacy.get("clients"):
        budgets = sorted({c["budget"] for c in privacy["clients"] if c.get("budget") is not None})
        lines.append(
            f"Every hospital trained with differential privacy (DP-SGD). The largest training privacy loss of any "
            f"hospital is epsilon {eps(privacy.get('max_epsilon'))} against a budget of "
            f"{', '.join(eps(b) for b in budgets)}; smaller is more private. "
            f"Ledger check: {privacy['ledger_check']['status']}. This training epsilon protects each training "
            f"record (replace one record by another; the training-set size is public), also against the "
            f"coordinator.")
        if privacy.get("max_eval_epsilon") is not None:
            lines.append(
                f"Evaluation counts were noised with their own epsilon: largest {eps(privacy['max_eval_epsilon'])} "
                "(add or remove one test record). The split is a keyed hash of each record's id, so the two compose "
                "in parallel: a record in either split is protected at the larger of its hospital's two epsilons, "
                "one whose replacement moves between the splits at their sum.")
        if not (report.get("config") or {}).get("eval-dp-noise-multiplier"):
            lines.append("Evaluation counts were sent exact and are NOT protected: no epsilon covers the hospitals' "
                         "test records in this run.")
        if privacy.get("declined_rounds"):
            lines.append(f"{len(privacy['declined_rounds'])} training requests were declined by hospitals "
                         "because they would have exceeded the privacy budget.")
    elif privacy.get("sample_level_dp"):
        lines.append("Differential privacy was on, but no hospital completed a DP training round.")
    else:
        lines.append("Hospitals trained WITHOUT differential privacy (sample-level DP-SGD was off).")
    central = privacy.get("client_level_dp") or {}
    if central.get("enabled"):
        spent = central.get("accounting") or {}
        lines.append(f"Each hospital's whole contribution was also protected by client-level DP "
                     f"({central['settings'].get('central-dp')}): epsilon {eps(spent.get('epsilon'))} at delta "
                     f"{format(spent['delta'], '.1e') if spent.get('delta') is not None else 'n/a'} after {spent.get('releases', '?')} noised rounds"
                     + (f", budget {spent['budget']:g}" if spent.get("budget") else "")
                     + " (replace one hospital's data; it protects against readers of the global model, "
                       "not against the coordinator, which saw each update).")
    secagg = privacy.get("secure_aggregation") or {}
    if secagg.get("enabled"):
        halted = [h["round"] for h in secagg.get("history", []) if h.get("halted")]
        lines.append(f"Hospitals' updates were combined with secure aggregation "
                     f"({(secagg.get('summary') or {}).get('protocol', 'SecAgg+')}): the coordinator saw only their sum"
                     + (f"; rounds {', '.join(map(str, halted))} were halted and changed nothing" if halted else "")
                     + ".")
    settings = report.get("fairness_settings", {})
    if report.get("fairness") and settings.get("meaningful") is False:
        lines.append("Per-group figures are NOT MEANINGFUL for this run (" + str(settings.get("not_meaningful_reason"))
                     + "): no group is named worst-served and no gap is claimed; the tables below are shown as "
                       "data only.")
        small = [f"by {attribute}: {', '.join(map(str, figures['suppressed_groups']))}"
                 for attribute, figures in report["fairness"].items() if figures.get("suppressed_groups")]
        if small:
            lines.append(f"Too small to report (fewer than {settings.get('min_group_size')} test samples): "
                         + "; ".join(small) + ".")
        return lines
    for attribute, figures in report.get("fairness", {}).items():
        worst = figures.get("worst_group") or {}
        gap = figures.get("accuracy_gap") or {}
        text = f"By {attribute}: "
        if worst.get("group") is not None:
            text += (f"the worst-served group is '{worst['group']}' with accuracy {pct(worst.get('accuracy'))} "
                     f"({interval(worst.get('accuracy_ci'))})")
        else:
            text += "no group was large enough to report"
        if gap.get("value") is not None:
            ci = gap.get("difference_ci")
            if ci:  # the signed difference best minus worst: its interval may include 0
                text += (f"; the gap to the best group ({' vs '.join(map(str, gap.get('between') or []))}) is "
                         f"{pp(gap['value'])} (95% interval of the difference {pp_interval(ci)}"
                         + ("" if figures.get("flagged") else f": {VERDICTS.get(gap.get('verdict'), '')}") + ")")
            else:  # a report built before signed differences: its interval is that of the absolute gap
                ci = gap.get("ci")
                text += (f"; the gap to the best group ({' vs '.join(map(str, gap.get('between') or []))}) is "
                         f"{pp(gap['value'])}" + (f" (95% interval {pp_interval(ci)})" if ci else ""))
        text += "."
        if figures.get("flagged"):
            text += f" FLAGGED: {figures.get('flag_reason') or 'gap above the threshold'}."
        if figures.get("suppressed_groups"):
            text += (f" Too small to report (fewer than {settings.get('min_group_size')} test samples): "
                     f"{', '.join(map(str, figures['suppressed_groups']))}.")
        lines.append(text)
    if not report.get("fairness"):
        lines.append(f"No per-group figures: {settings.get('status', 'not available')}.")
    return lines
