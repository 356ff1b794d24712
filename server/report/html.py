"""report.html: the signed report.json made readable for people who do not read JSON.

One self-contained file (plots are base64 PNGs drawn with matplotlib's Agg
backend, no scripts, no network), built only from report.json, so
``fedemo report RUN_DIR`` can rebuild it at any time and the same JSON always
gives the same page. The page names the SHA-256 of the report.json it was
built from (``<meta name="fedemo-report-sha256">``), which ``fedemo verify``
compares with the file, so an outdated page is caught. The page itself is
bound to the signature: the coordinator signs its bytes (``write_html`` with
the key), and a page without that signature must equal ``rendered_page``
byte for byte. A report.json that does not verify never gets a clean page:
its page opens with the UNVERIFIED banner.
"""

from __future__ import annotations

import hashlib
import json
import re
from html import escape
from pathlib import Path

from server.report.calibration import calibration_section
from server.report.difference_rule import INCONCLUSIVE_WIDTH_FACTOR, VERDICTS
from server.report.html_parts import (fingerprint, headline_html, hospitals_html, html_table, incomplete_banner,
                                      delta, eps, interval, loss_note, majority_banner, num, nw, pp_interval,
                                      ratio, ratio_interval, signed_pp)
from server.report.plots import (ordered_groups, pct, plot_epsilon, plot_gaps, plot_global, plot_group_history,
                                 plot_groups, pp, same_lines)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.report.signing import HTML_FILE, REPORT_FILE, SIGNATURE_FILE, sign_page, verify_run
from shared_models.atomic_files import atomic_write_bytes

DIGEST_META = "fedemo-report-sha256"


# --------------------------------------------------------------------------- formatting
def source_digest(html: str) -> str | None:
    """The report.json SHA-256 a report.html says it was built from."""
    match = re.search(rf'<meta name="{DIGEST_META}" content="([0-9a-f]{{64}})">', html)
    return match.group(1) if match else None


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
        parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
    else:
        parts.append("<p><strong>No differential-privacy mechanism was on in this run.</strong></p>")
    model = guarantees.get("threat_model", {})
    parts.append("<ul>" + "".join(f"<li><strong>{escape(k)}</strong>: {escape(str(v))}</li>"
                                  for k, v in model.items()) + "</ul>")
    side = guarantees.get("side_channels", [])
    if side:
        parts.append("<p>Side channels (not covered by any epsilon):</p><ul>"
                     + "".join(f"<li><strong>{escape(c['channel'])}</strong> reveals {escape(c['reveals'])}. "
                               f"Would remove it: {escape(c['would_remove_it'])}. Why not: "
                               f"{escape(c['why_not_removed'])}.</li>" for c in side) + "</ul>")
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
                     "earlier runs on the same ledger); delta is the small probability the guarantee fails. The "
                     "training epsilon covers its training records (replace one record), the evaluation-count "
                     "epsilon its test records (add or remove one); each is held to the budget on its own. "
                     "Each figure is what the hospital reported, and (in simulation) was checked against its "
                     f"privacy ledger: <strong>{escape(privacy['ledger_check']['status'])}</strong>.</p>")
        parts.append(plot_epsilon(privacy))
        shared = [g for g in same_lines(privacy["clients"]) if len(g) > 1]
        if shared:
            parts.append("<p><small>Hospitals with the same data size and settings spend exactly the same epsilon, "
                         "so their lines coincide: " + "; ".join(
                             f"hospitals {escape(', '.join(str(c['client_id']) for c in g))} share one line"
                             for g in shared) + ".</small></p>")
        checks = {c["client_id"]: c["status"] for c in privacy["ledger_check"].get("clients", [])}
        rows = [[escape(c["client_id"]), eps(c.get("epsilon")), eps(c.get("eval_epsilon")), delta(c.get("delta")),
                 eps(c.get("budget")), eps(c.get("budget_remaining")), num(c.get("noise_multiplier")),
                 num(c.get("sample_rate")), num(c.get("steps")), num(c.get("max_grad_norm")),
                 escape(str(c.get("accountant"))), escape(checks.get(c["client_id"], ""))] for c in privacy["clients"]]
        parts.append(html_table(["hospital", "training epsilon", "evaluation-count epsilon", "delta", "budget",
                                 "remaining", "noise multiplier", "sample rate", "steps (this run)", "clipping norm",
                                 "accountant", "ledger"], rows))
        broken = [c for c in privacy["ledger_check"].get("clients", []) if not (c.get("chain") or {}).get("ok", True)]
        if broken:
            parts.append('<p class="warn"><strong>Ledger chain check failed</strong> for hospital(s) '
                         + ", ".join(escape(str(c["client_id"])) for c in broken)
                         + ": their ledgers no longer hold the chain heads the coordinator recorded after their "
                           "spends (events deleted, or the ledger replaced by a fresh one).</p>")
    if privacy.get("declined_rounds"):
        rows = [[num(d["round"]), num(d.get("node_id")), escape(d.get("reason", ""))] for d in privacy["declined_rounds"]]
        parts.append("<h3>Declined training rounds</h3>" + html_table(["round", "node", "reason"], rows))
    for key, title in (("client_level_dp", "Client-level central DP"), ("secure_aggregation", "Secure aggregation")):
        if (privacy.get(key) or {}).get("enabled"):
            parts.append(f"<h3>{title}</h3><pre>{escape(json.dumps(privacy[key], indent=2, sort_keys=True))}</pre>")
    return "\n".join(parts)


def rounds_html(rounds: list[dict]) -> str:
    rows = [[num(r["round"]), pct(r.get("accuracy")), nw(interval(r.get("accuracy_ci"))), pct(r.get("macro_f1")),
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
.banner{border:2px solid #b00;padding:.6em .8em;background:#fee;margin:1em 0}
.warn{border-left:4px solid #c60;background:#fff6e5;padding:.4em .8em}
.headline{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.headline div{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;min-width:10em}
.headline div>span{display:block;font-size:.85em;color:#555}.headline b{display:block;font-size:1.6em}
.headline small{display:block}
code.fp{font-size:.95em;word-break:break-all}.nw,.banner code{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%;margin:1em 0}.scroll table{margin:0}code{overflow-wrap:anywhere}
.unverified{font-size:1.05em}.unverified ul{margin:.3em 0}
@media (max-width:600px){body{margin:.8em auto;padding:0 .6em}h1{font-size:1.3em}h2{font-size:1.2em}
.headline div{flex:1 1 40%;min-width:0}.headline b{font-size:1.3em}table{font-size:.85em}
.scroll table{width:max-content}th,td{max-width:15em}}
"""


def unverified_banner(problems: list[str] | None) -> str:
    """First thing on a page built from a report.json that does not verify: its figures may be forged."""
    if problems is None:
        return ""
    items = "".join(f"<li>{escape(p)}</li>" for p in problems[:8])
    return ('<div class="banner unverified" role="alert"><p><strong>UNVERIFIED: this page was built from a '
            'report.json that does not match its signature</strong> (or has none). Its figures may have been '
            'altered after the run; do not rely on them. Restore report.json and report.sig from a trusted copy and '
            f'run <code>fedemo verify RUN_FOLDER</code>.</p><ul>{items}</ul></div>')


def rendered_page(report: dict, report_sha256: str, key_id: str | None) -> str:
    """The page of a report.json that verifies (no UNVERIFIED banner): what ``fedemo verify`` compares an
    unsigned report.html with, byte for byte."""
    return render_html(report, report_sha256, key_id)


def render_html(report: dict, report_sha256: str, key_id: str | None = None,
                unverified: list[str] | None = None) -> str:
    """The whole page; a pure function of the report, its digest, the signing key's id (from report.sig) and,
    for a report.json that does not verify, the problems ``verify_run`` found (``unverified``)."""
    run = report["run"]
    if unverified is not None:
        signer = ("<strong>report.json does NOT verify</strong>"
                  + (f" against the signature of key <code class=\"fp\">{escape(fingerprint(key_id))}</code>"
                     if key_id else " (report.sig is missing)"))
    else:
        signer = (f'signed by the coordinator key with fingerprint (SHA-256 of the Ed25519 public key) '
                  f'<code class="fp" id="key-fingerprint">{escape(fingerprint(key_id))}</code>'
                  if key_id else "<strong>no signature found</strong> (report.sig is missing)")
    summary = "".join(f"<li>{escape(line)}</li>" for line in plain_summary(report))
    loss = loss_note(report.get("rounds") or [])
    calibration = calibration_section(report)  # ECE per group and reliability diagram (server/report/calibration.py)
    config_rows = [[escape(k), escape(json.dumps(v))] for k, v in sorted(report.get("config", {}).items())]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="{DIGEST_META}" content="{report_sha256}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{'UNVERIFIED ' if unverified is not None else ''}FedEmo run report {escape(str(run.get('run_id')))}</title><style>{CSS}</style></head><body>
{unverified_banner(unverified)}
<h1>FedEmo run report: {escape(str(run.get('run_id')))}</h1>
{incomplete_banner(run)}
{majority_banner(report)}
<p><small>{escape(str(run.get('task')))} emotion recognition, dataset {escape(str(run.get('dataset')))}, model
{escape(str(run.get('model')))}; report schema {report.get('schema_version')}, generated {escape(str(report.get('generated_at')))};
{signer}.</small></p>
{headline_html(report)}
<h2>Summary</h2>
<div class="summary"><ul>{summary}</ul></div>
<h2>How well the model works for each group</h2>
{fairness_html(report)}
<h2>Each hospital's test results</h2>
{hospitals_html(report)}
<h2>Privacy spent by each hospital</h2>
{privacy_html(report['privacy'])}
<h2>Global model over the rounds</h2>
{plot_global(report['rounds'], report.get('baseline'))}
{f'<p class="warn">{escape(loss)}</p>' if loss else ''}
{rounds_html(report['rounds'])}
{calibration}
<h2>Is this report authentic?</h2>
<p>This page was built from <code>report.json</code> with SHA-256 <code>{report_sha256}</code>. That file is signed
with the coordinator's Ed25519 key (<code>report.sig</code>, public key in <code>report.pub</code>).</p>
<p>Signing key fingerprint: {f'<code class="fp">{escape(fingerprint(key_id))}</code>' if key_id else 'none (report.sig is missing)'}.
Compare it with the fingerprint the coordinator publishes. The coordinator also signs this page's exact bytes
(<code>pages</code> in <code>report.sig</code>), but a page cannot vouch for itself: run
<code>fedemo verify RUN_FOLDER</code> (it prints the same fingerprint) to check that neither file was
changed since the run; it names the file that was.</p>
<details><summary>Run configuration</summary>{html_table(['key', 'value'], config_rows)}</details>
<p><small>Software: {escape(json.dumps(run.get('versions', {}), sort_keys=True))}</small></p>
</body></html>
"""


def write_html(run_dir: Path, key: Ed25519PrivateKey | None = None) -> Path:
    """(Re)build report.html from the run folder's report.json.

    A report.json that does not verify gets a page with the UNVERIFIED banner (never a clean-looking page of
    altered figures). ``key``: the coordinator's key, which signs the page (report.sig ``pages``) when it is
    the key that signed report.json and report.json verifies; without it the page stays verifiable by
    re-rendering (``fedemo verify``).
    """
    run_dir = Path(run_dir)
    data = (run_dir / REPORT_FILE).read_bytes()
    try:  # the signer's key id, for the page; fedemo verify checks it against the signature
        key_id = str(json.loads((run_dir / SIGNATURE_FILE).read_text(encoding="utf-8"))["key_id"])
    except (OSError, ValueError, KeyError, TypeError):
        key_id = None
    verdict = verify_run(run_dir)
    html = render_html(json.loads(data.decode("utf-8")), hashlib.sha256(data).hexdigest(), key_id,
                       None if verdict.valid else verdict.problems)
    path = run_dir / HTML_FILE
    page = html.encode("utf-8")
    atomic_write_bytes(path, page)
    if key is not None and verdict.valid:
        sign_page(run_dir, HTML_FILE, page, key)
    return path
