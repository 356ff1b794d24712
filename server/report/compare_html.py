"""comparison.html: the two runs' comparison as a self-contained page (group plots, tables, the test-row check)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from server.report.html_parts import html_table, interval, num
from server.report.page_style import CSS
from server.report.plots import _plt, _ticker, figure_img, pct

METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "uar": "UAR (mean recall over emotions)",
                 "loss": "loss (cross-entropy)"}


def _short(digest: dict[str, Any] | None) -> str:
    return f"{digest['n']} rows, SHA-256 {digest['sha256'][:12]}" if digest and digest.get("sha256") else "unknown"


def points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} pp"


def yes_no(flag: bool | None) -> str:
    return "n/a" if flag is None else ("<strong class=flag>yes</strong>" if flag else "no")


def plot_attribute(attribute: str, item: dict[str, Any]) -> str:
    def reported(side: dict | None) -> bool:
        return bool(side) and not side["suppressed"] and side.get("accuracy") is not None

    ordered = [(g, item["groups"][g]) for g in item.get("group_order", item["groups"])]
    rows = [(g, r) for g, r in ordered if reported(r["a"]) or reported(r["b"])]
    if not rows:
        return ""
    fig, ax = _plt().subplots(figsize=(5.6, 0.6 * len(rows) + 2.0), layout="constrained")
    height = 0.38
    for offset, side, color in ((-height / 2, "a", "#4c78a8"), (height / 2, "b", "#f58518")):
        ys, xs, lo, hi = [], [], [], []
        for i, (_, r) in enumerate(rows):
            s = r[side]
            if s and not s["suppressed"] and s.get("accuracy") is not None:
                ys.append(i + offset)
                xs.append(100 * s["accuracy"])
                lo.append(max(0.0, 100 * (s["accuracy"] - s["accuracy_ci"][0])))
                hi.append(max(0.0, 100 * (s["accuracy_ci"][1] - s["accuracy"])))
        ax.barh(ys, xs, height=height, xerr=[lo, hi], capsize=3, color=color, label=side.upper())
    ax.set_yticks(range(len(rows)), [g for g, _ in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(_ticker().PercentFormatter(xmax=100, decimals=0))
    ax.set_xlabel("accuracy (error bars: 95% interval)")
    ax.set_title(f"Accuracy per {attribute} group: A vs B")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    alt = (f"Bar chart of accuracy per {attribute} group in run A and run B with 95% intervals: "
           + "; ".join(f"{g} A {pct((r['a'] or {}).get('accuracy'))}, B {pct((r['b'] or {}).get('accuracy'))}"
                       for g, r in rows) + ".")
    return figure_img(fig, alt)


def render_comparison_html(comparison: dict[str, Any]) -> str:
    parts = []
    for attribute, item in comparison["attributes"].items():
        parts.append(f"<h3>By {escape(attribute)}</h3>{plot_attribute(attribute, item)}")
        rows = []
        for group in item.get("group_order", item["groups"]):
            r = item["groups"][group]
            cells = [escape(group)]
            for side in ("a", "b"):
                s = r[side]
                if s is None:
                    cells += ["not in this run", ""]
                elif s["suppressed"]:
                    cells += ["suppressed: too few samples", ""]
                else:
                    cells += [pct(s.get("accuracy")) + f" (n={s.get('n')})", interval(s.get("accuracy_ci"))]
            change, ci = r["accuracy_change"], r["accuracy_change_ci"]
            cells += ["n/a" if change is None else f"{100 * change:+.1f} pp",
                      "" if not ci else f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pp"]
            rows.append(cells)
        parts.append(html_table(["group", "accuracy A", "interval A", "accuracy B", "interval B", "change B - A",
                             "interval of change"], rows))
        wg, gap = item["worst_group"], item["accuracy_gap"]
        parts.append(html_table(["", "A", "B"], [
            ["worst group", escape(f"{wg['a'].get('group')}: {pct(wg['a'].get('accuracy'))}"),
             escape(f"{wg['b'].get('group')}: {pct(wg['b'].get('accuracy'))}")],
            ["accuracy gap (best - worst group)", points(gap["a"]), points(gap["b"])],
            ["gap flagged", yes_no(item["flagged"]["a"]), yes_no(item["flagged"]["b"])]]))
    def rate(metric: str) -> bool:  # rates in %, their changes in percentage points; loss and the rest plain
        return metric in ("accuracy", "macro_f1", "uar")

    global_rows = [[escape(METRIC_LABELS.get(m, m)), pct(v["a"]) if rate(m) else num(v["a"]),
                    pct(v["b"]) if rate(m) else num(v["b"]),
                    "n/a" if v["change"] is None else (f"{100 * v['change']:+.1f} pp" if rate(m)
                                                       else f"{v['change']:+.3f}")]
                   for m, v in comparison["global"].items()]
    runs_rows = [[side.upper(), escape(r["label"]), escape(r["path"]),
                  "valid" if r["signature"]["valid"] else "<strong class=flag>NOT VALID</strong>: "
                  + escape("; ".join(r["signature"]["problems"])), f"<code>{r['report_sha256'][:16]}</code>"]
                 for side, r in comparison["runs"].items()]
    diff_rows = [[escape(k), escape(json.dumps(v[0])), escape(json.dumps(v[1]))]
                 for k, v in comparison["config_differences"].items()]
    summary = "".join(f"<li>{escape(line)}</li>" for line in comparison["findings"])
    rows = comparison.get("test_rows") or {}
    headline = "DIFFERENT TEST ROWS" if rows.get("status") == "different" else "TEST ROWS NOT CONFIRMED"
    banner = "" if rows.get("status", "same") == "same" else (
        f'<p class="flag" role="alert"><strong>{headline}:</strong> {escape(rows["message"])}.</p>')
    test_rows = (f"<h3>Test rows</h3><p>{escape(rows.get('message', 'not checked'))}. Digests: A "
                 f"{escape(_short(rows.get('a')))}; B {escape(_short(rows.get('b')))}.</p>") if rows else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>FedEmo comparison</title><style>{CSS}</style></head><body>
<h1>FedEmo comparison: who pays for the change?</h1>
{banner}
<h2>Summary</h2><div class="summary"><ul>{summary}</ul></div>
<h2>Per group, side by side</h2>
<p>Each group's accuracy in run A and run B with 95% intervals; the change is B minus A with a conservative 95%
interval (Newcombe). Groups too small to report are named as suppressed.</p>
{''.join(parts) or '<p>Neither run has per-group figures.</p>'}
<h2>Whole test set</h2>{html_table(['metric', 'A', 'B', 'change B - A'], global_rows)}
<h2>The runs compared</h2>{html_table(['', 'run', 'folder', 'signature', 'report SHA-256'], runs_rows)}
{test_rows}
<h3>Configuration differences</h3>{html_table(['key', 'A', 'B'], diff_rows) if diff_rows else '<p>None.</p>'}
</body></html>
"""
