"""The page's fairness section: per attribute, the group plot, the group table, the gap measures and status."""

from __future__ import annotations

from html import escape

from server.report.difference_rule import INCONCLUSIVE_WIDTH_FACTOR, VERDICTS
from server.report.html_parts import (html_table, interval, num, nw, pp_interval, ratio, ratio_interval,
                                      signed_pp)
from server.report.plots import ordered_groups, pct, plot_gaps, plot_group_history, plot_groups, pp


def group_reading(diff: dict) -> str:
    """A group's signed difference from the rest in words, with its direction when the interval shows one."""
    verdict = diff.get("verdict")
    text = VERDICTS.get(verdict, "")
    if verdict in ("above_threshold", "difference") and diff.get("value") is not None:
        side = "lower" if diff["value"] < 0 else "higher"
        text = (f"{side} than the rest, by more than the threshold" if verdict == "above_threshold"
                else f"{side} than the rest, by less than the threshold or an uncertain amount")
    return text


def fairness_html(report: dict) -> str:
    settings = report.get("fairness_settings", {})
    fairness = report.get("fairness", {})
    if not fairness:
        return f"<p>{escape(str(settings.get('status', 'No per-group figures in this run.')))}</p>"
    meaningful = settings.get("meaningful") is not False
    threshold = settings.get("gap_threshold")
    parts = []
    if not meaningful:
        parts.append('<p class="warn"><strong>Not meaningful for this run:</strong> '
                     f'{escape(str(settings.get("not_meaningful_reason")))}. The figures below are data, not findings: '
                     "no group is named worst-served and no gap is flagged.</p>")
    parts.append(f"<p>Figures of round {settings.get('round')}; groups with fewer than "
                 f"{settings.get('min_group_size')} test samples are suppressed (not shown, to protect the people in "
                 f"them and because their figures would be noise). Intervals are "
                 f"{int(100 * settings.get('confidence', 0.95))}% intervals; accuracies are in %, differences between "
                 f"groups in percentage points (pp), ratios as plain ratios."
                 + (f" A difference between groups is signed (a group minus the rest of the groups, or the best "
                    f"minus the worst group) and its interval may include 0 (no clear difference). A gap is "
                    f"flagged only when its whole interval lies above {pp(threshold)}; an interval wider than "
                    f"{pp(INCONCLUSIVE_WIDTH_FACTOR * threshold)} is too few samples to conclude either way."
                    if threshold is not None else "") + "</p>")
    noise = settings.get("eval_count_noise")
    if noise:
        spent = [v for v in (noise.get("epsilon_by_client") or {}).values() if v is not None]
        parts.append('<p class="warn">The per-group counts carry differential-privacy noise (Gaussian, noise '
                     f'multiplier {num(noise.get("noise_multiplier"))}, sensitivity {num(noise.get("sensitivity"))}'
                     + (f"; each hospital's epsilon after this evaluation: up to {max(spent):.3g}" if spent else "")
                     + "): group sizes and accuracies are noised figures"
                     + (", and so are the overall counts, computed from them (the mean over attributes of their sums)" if noise.get("overall_from_groups")
                        else "") + ".</p>")
    for attribute, figures in fairness.items():
        parts.append(f"<h3>By {escape(attribute)}</h3>")
        parts.append(plot_groups(attribute, figures, report["final"].get("accuracy"),
                                 (report.get("baseline") or {}).get("majority_rate")))
        rows = []
        for group, v in ordered_groups(figures):
            if v.get("suppressed"):
                rows.append([escape(str(group)), f"fewer than {settings.get('min_group_size')}",
                             "suppressed: too few samples to report", "", "", "", "", ""])
            else:
                diff = v.get("difference_from_rest") or {}
                rows.append([escape(str(group)), num(v.get("n")), pct(v.get("accuracy")),
                             nw(interval(v.get("accuracy_ci"))), pct(v.get("macro_f1")),
                             nw(signed_pp(diff.get("value"))), nw(pp_interval(diff.get("ci"))),
                             escape(group_reading(diff)) if meaningful else "not assessed"])
        headers = ["group", "test samples", "accuracy", "95% interval", "macro-F1", "difference from the rest",
                   "95% interval", "reading"]
        if not any(v.get("difference_from_rest") for _, v in ordered_groups(figures)):
            headers, rows = headers[:5], [row[:5] for row in rows]  # a report built before signed differences
        parts.append(html_table(headers, rows))
        facts = []
        for key, label in (("accuracy_gap", "accuracy gap (best - worst group)"),
                           ("accuracy_ratio", "accuracy ratio (worst / best group)"),
                           ("equalized_odds_difference", "equalized-odds difference"),
                           ("predicted_rate_difference", "predicted-rate difference")):
            item = figures.get(key) or {}
            if item.get("value") is not None:
                is_ratio = key == "accuracy_ratio"
                ci, method, reading = item.get("ci"), str(item.get("method") or ""), ""
                if key == "accuracy_gap" and item.get("difference_ci"):
                    ci, method = item["difference_ci"], ("signed difference best minus worst group, Newcombe's "
                                                         "hybrid score interval (may include 0)")
                    reading = VERDICTS.get(item.get("verdict"), "")
                elif item.get("conclusive") is False:
                    reading = "too few to conclude: the interval is wider than " + pp(figures.get(
                        "inconclusive_width", INCONCLUSIVE_WIDTH_FACTOR * (threshold or 0)))
                elif item.get("conclusive"):
                    reading = "interval narrow enough to read"
                facts.append([escape(label), nw(ratio(item["value"]) if is_ratio else pp(item["value"])),
                              nw(ratio_interval(ci) if is_ratio else pp_interval(ci)),
                              escape(reading if meaningful else "not assessed"), escape(method)])
        if facts:
            parts.append(html_table(["measure" + ("" if meaningful else " (not meaningful here)"), "value",
                                     "95% interval", "reading", "method"], facts))
        if not meaningful:
            status = "not assessed: the model is no better than the majority class"
        elif figures.get("flagged"):
            status = "<strong class=flag>flagged</strong>: " + escape(str(figures.get("flag_reason") or ""))
        elif (figures.get("accuracy_gap") or {}).get("verdict") == "too_few_to_conclude":
            status = ("not flagged: too few samples to conclude (the interval of the difference between the best "
                      "and worst group is wider than " + pp(figures.get("inconclusive_width")) + ")")
        else:
            status = "not flagged"
        parts.append(f"<p>Status: {status}.</p>")
        history = plot_group_history(attribute, figures)
        if history:
            parts.append(f"<h4>Accuracy per {escape(attribute)} group over rounds</h4>" + history)
    gaps = plot_gaps(fairness, settings.get("gap_threshold"))
    if gaps:
        parts.append("<h3>Gaps over rounds" + ("" if meaningful else " (not meaningful for this run)") + "</h3>"
                     + gaps)
    return "\n".join(parts)
