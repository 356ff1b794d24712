"""The page's privacy section: what each figure means (threat model), each hospital's spend and ledger check."""

from __future__ import annotations

import json
from html import escape

from server.report.html_parts import delta, eps, html_table, num
from server.report.plots import plot_epsilon, same_lines


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
