"""report.html: the signed report.json made readable for people who do not read JSON.

One self-contained file (plots are base64 PNGs drawn with matplotlib's Agg
backend, no scripts, no network), built only from report.json, so
``fedemo report RUN_DIR`` can rebuild it at any time and the same JSON always
gives the same page. The page names the SHA-256 of the report.json it was
built from (``<meta name="fedemo-report-sha256">``), which ``fedemo verify``
compares with the file, so an outdated page is caught.
"""

from __future__ import annotations

import hashlib
import json
import re
from html import escape
from pathlib import Path
from typing import Any

from server.report.plots import ordered_groups, pct, plot_epsilon, plot_gaps, plot_global, plot_groups
from server.report.signing import REPORT_FILE

HTML_FILE = "report.html"
DIGEST_META = "fedemo-report-sha256"


# --------------------------------------------------------------------------- formatting
def interval(ci: list[float] | None) -> str:
    return "" if not ci else f"{100 * ci[0]:.1f}% to {100 * ci[1]:.1f}%"


def num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 0.1 and x != 0 else f"{x:.{digits}f}"
    return escape(str(x))


def source_digest(html: str) -> str | None:
    """The report.json SHA-256 a report.html says it was built from."""
    match = re.search(rf'<meta name="{DIGEST_META}" content="([0-9a-f]{{64}})">', html)
    return match.group(1) if match else None


def plain_summary(report: dict) -> list[str]:
    """The findings in plain sentences, most important first."""
    run, final, privacy = report["run"], report["final"], report["privacy"]
    lines = []
    n = final.get("eval_examples") or 0
    correct = sum(final["confusion"][i][i] for i in range(len(final["confusion"]))) if final.get("confusion") else None
    lines.append(
        f"After {run.get('rounds_completed')} training rounds with {run.get('num_clients')} hospitals, the shared "
        f"{run.get('task')} emotion model recognised {correct if correct is not None else '?'} of {n} held-out "
        f"test samples correctly: accuracy {pct(final.get('accuracy'))}"
        + (f" (95% interval {interval(final.get('accuracy_ci'))})" if final.get("accuracy_ci") else "")
        + f"; before training it was {pct(report['initial'].get('accuracy'))}.")
    if privacy.get("sample_level_dp") and privacy.get("clients"):
        budgets = sorted({c["budget"] for c in privacy["clients"] if c.get("budget") is not None})
        lines.append(
            f"Every hospital trained with differential privacy (DP-SGD). The largest privacy loss of any "
            f"hospital is epsilon {num(privacy.get('max_epsilon'))} against a budget of "
            f"{', '.join(f'{b:g}' for b in budgets)}; smaller is more private. "
            f"Ledger check: {privacy['ledger_check']['status']}. This epsilon protects each training record "
            f"(add or remove one record), also against the coordinator.")
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
                     f"({central['settings'].get('central-dp')}): epsilon {num(spent.get('epsilon'))} at delta "
                     f"{num(spent.get('delta'))} after {spent.get('releases', '?')} noised rounds"
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
            ci = gap.get("ci")
            text += (f"; the gap to the best group ({' vs '.join(map(str, gap.get('between') or []))}) is "
                     f"{100 * gap['value']:.1f} percentage points"
                     + (f" (95% interval {100 * ci[0]:.1f} to {100 * ci[1]:.1f})" if ci else ""))
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


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    """A table whose headers are escaped here and whose cells are HTML already (callers escape or format them)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fairness_html(report: dict) -> str:
    settings = report.get("fairness_settings", {})
    fairness = report.get("fairness", {})
    if not fairness:
        return f"<p>{escape(str(settings.get('status', 'No per-group figures in this run.')))}</p>"
    parts = [f"<p>Figures of round {settings.get('round')}; groups with fewer than "
             f"{settings.get('min_group_size')} test samples are suppressed (not shown, to protect the people in "
             f"them and because their figures would be noise). Intervals are {int(100 * settings.get('confidence', 0.95))}%"
             f" intervals. A gap above {settings.get('gap_threshold')} is flagged.</p>"]
    if settings.get("eval_count_noise"):
        parts.append(f"<p>The per-group counts carry differential-privacy noise "
                     f"({escape(json.dumps(settings['eval_count_noise']))}).</p>")
    for attribute, figures in fairness.items():
        parts.append(f"<h3>By {escape(attribute)}</h3>")
        parts.append(plot_groups(attribute, figures, report["final"].get("accuracy")))
        rows = []
        for group, v in ordered_groups(figures):
            if v.get("suppressed"):
                rows.append([escape(str(group)), f"fewer than {settings.get('min_group_size')}",
                             "suppressed: too few samples to report", "", ""])
            else:
                rows.append([escape(str(group)), num(v.get("n")), pct(v.get("accuracy")),
                             interval(v.get("accuracy_ci")), num(v.get("macro_f1"))])
        parts.append(html_table(["group", "test samples", "accuracy", "95% interval", "macro-F1"], rows))
        facts = []
        for key, label in (("accuracy_gap", "accuracy gap (best - worst)"), ("accuracy_ratio", "accuracy ratio"),
                           ("equalized_odds_difference", "equalized-odds difference"),
                           ("predicted_rate_difference", "predicted-rate difference")):
            item = figures.get(key) or {}
            if item.get("value") is not None:
                facts.append([escape(label), num(item["value"]), interval(item.get("ci")).replace("%", "")
                              if key == "accuracy_ratio" else interval(item.get("ci")),
                              escape(str(item.get("method") or ""))])
        if facts:
            parts.append(html_table(["measure", "value", "interval", "method"], facts))
        status = ("<strong class=flag>flagged</strong>: " + escape(str(figures.get("flag_reason") or ""))
                  if figures.get("flagged") else "not flagged")
        parts.append(f"<p>Status: {status}.</p>")
    gaps = plot_gaps(fairness, settings.get("gap_threshold"))
    if gaps:
        parts.append("<h3>Gaps over rounds</h3>" + gaps)
    return "\n".join(parts)


def guarantees_html(guarantees: dict) -> str:
    """What each privacy figure means: the threat model, one row per mechanism, and what left in plain."""
    if not guarantees:
        return ""
    cells = ("mechanism", "protects", "adjacency", "against", "epsilon")
    head = "".join(f"<th>{escape(c)}</th>" for c in cells)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(m.get(c, '')))}</td>" for c in cells) + "</tr>"
                   for m in guarantees.get("mechanisms", []))
    parts = ["<h3>What the privacy figures mean</h3>"]
    if body:
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    else:
        parts.append("<p><strong>No differential-privacy mechanism was on in this run.</strong></p>")
    model = guarantees.get("threat_model", {})
    parts.append("<ul>" + "".join(f"<li><strong>{escape(k)}</strong>: {escape(str(v))}</li>"
                                  for k, v in model.items()) + "</ul>")
    plain = guarantees.get("released_in_plain", [])
    if plain:
        parts.append("<p>Released to the coordinator without a DP mechanism:</p><ul>"
                     + "".join(f"<li>{escape(p['value'])}: {escape(p['why'])}</li>" for p in plain) + "</ul>")
    return "\n".join(parts)


def privacy_html(privacy: dict) -> str:
    parts = [guarantees_html(privacy.get("guarantees") or {})]
    if not privacy.get("clients"):
        parts.append("<p>No hospital reported DP-SGD training in this run"
                     + (" (sample-level DP was off)." if not privacy.get("sample_level_dp") else ".") + "</p>")
    else:
        parts.append("<p>Epsilon is the privacy loss a hospital's data has spent (cumulative over rounds, and over "
                     "earlier runs on the same ledger); delta is the small probability the guarantee fails. "
                     "Each figure is what the hospital reported, and (in simulation) was checked against its "
                     f"privacy ledger: <strong>{escape(privacy['ledger_check']['status'])}</strong>.</p>")
        parts.append(plot_epsilon(privacy))
        checks = {c["client_id"]: c["status"] for c in privacy["ledger_check"].get("clients", [])}
        rows = [[escape(c["client_id"]), num(c.get("epsilon")), num(c.get("delta")), num(c.get("budget")),
                 num(c.get("budget_remaining")), num(c.get("noise_multiplier")), num(c.get("sample_rate")),
                 num(c.get("steps")), num(c.get("max_grad_norm")), escape(str(c.get("accountant"))),
                 escape(checks.get(c["client_id"], ""))] for c in privacy["clients"]]
        parts.append(html_table(["hospital", "epsilon", "delta", "budget", "remaining", "noise multiplier",
                             "sample rate", "steps (this run)", "clipping norm", "accountant", "ledger"], rows))
    if privacy.get("declined_rounds"):
        rows = [[num(d["round"]), num(d.get("node_id")), escape(d.get("reason", ""))] for d in privacy["declined_rounds"]]
        parts.append("<h3>Declined training rounds</h3>" + html_table(["round", "node", "reason"], rows))
    for key, title in (("client_level_dp", "Client-level central DP"), ("secure_aggregation", "Secure aggregation")):
        if (privacy.get(key) or {}).get("enabled"):
            parts.append(f"<h3>{title}</h3><pre>{escape(json.dumps(privacy[key], indent=2, sort_keys=True))}</pre>")
    return "\n".join(parts)


def rounds_html(rounds: list[dict]) -> str:
    rows = [[num(r["round"]), pct(r.get("accuracy")), interval(r.get("accuracy_ci")), num(r.get("macro_f1")),
             num(r.get("loss")), num(r.get("eval_examples")), num(r.get("clients_trained")),
             num(r.get("clients_evaluated")), num(len(r.get("train_failures", [])) + len(r.get("evaluate_failures", []))),
             escape("; ".join(f"{x['client']}: {x['reason']}" for x in r.get("train_rejected", [])))]
            for r in rounds]
    return html_table(["round", "accuracy", "95% interval", "macro-F1", "loss", "test samples", "hospitals trained",
                   "hospitals evaluated", "failures", "updates rejected"], rows)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f4f4f4}.summary{background:#f6f8fa;border-left:4px solid #4c78a8;padding:.5em 1.2em}
.flag{color:#b00}img{max-width:100%}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em}
small{color:#666}
"""


def incomplete_banner(run: dict) -> str:
    """A run that stopped before its planned rounds says so first: its figures are not the planned run's."""
    if not run.get("incomplete"):
        return ""
    how = "interrupted" if run.get("interrupted") else "stopped"
    return (f'<p class="banner" style="border:2px solid #b00;padding:.5em;background:#fee"><strong>Incomplete run:'
            f' {how} after {run.get("rounds_completed")} of {run.get("rounds_planned")} planned rounds.</strong> '
            f'Continue it with <code>fedemo simulate --resume RUN_FOLDER</code>.</p>')


def render_html(report: dict, report_sha256: str) -> str:
    """The whole page; a pure function of the report and its digest."""
    run = report["run"]
    summary = "".join(f"<li>{escape(line)}</li>" for line in plain_summary(report))
    config_rows = [[escape(k), escape(json.dumps(v))] for k, v in sorted(report.get("config", {}).items())]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="{DIGEST_META}" content="{report_sha256}">
<title>FedEmo run report {escape(str(run.get('run_id')))}</title><style>{CSS}</style></head><body>
<h1>FedEmo run report: {escape(str(run.get('run_id')))}</h1>
{incomplete_banner(run)}
<p><small>{escape(str(run.get('task')))} emotion recognition, dataset {escape(str(run.get('dataset')))}, model
{escape(str(run.get('model')))}; report schema {report.get('schema_version')}, generated {escape(str(report.get('generated_at')))}.
</small></p>
<h2>Summary</h2>
<div class="summary"><ul>{summary}</ul></div>
<h2>How well the model works for each group</h2>
{fairness_html(report)}
<h2>Privacy spent by each hospital</h2>
{privacy_html(report['privacy'])}
<h2>Global model over the rounds</h2>
{plot_global(report['rounds'])}
{rounds_html(report['rounds'])}
<h2>Is this report authentic?</h2>
<p>This page was built from <code>report.json</code> with SHA-256 <code>{report_sha256}</code>. That file is signed
with the coordinator's Ed25519 key (<code>report.sig</code>, public key in <code>report.pub</code>). Run
<code>fedemo verify RUN_FOLDER</code> to check that neither file was changed since the run.</p>
<details><summary>Run configuration</summary>{html_table(['key', 'value'], config_rows)}</details>
<p><small>Software: {escape(json.dumps(run.get('versions', {}), sort_keys=True))}</small></p>
</body></html>
"""


def write_html(run_dir: Path) -> Path:
    """(Re)build report.html from the run folder's report.json."""
    run_dir = Path(run_dir)
    data = (run_dir / REPORT_FILE).read_bytes()
    html = render_html(json.loads(data.decode("utf-8")), hashlib.sha256(data).hexdigest())
    path = run_dir / HTML_FILE
    path.write_text(html, encoding="utf-8")
    return path
