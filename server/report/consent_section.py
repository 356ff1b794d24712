"""The report's consent section: per hospital, which consent manifest it applied and what consent left out.

Built from the ``consent`` entries of the nodes' train replies in metrics.jsonl (counts and the manifest's
hash; never record ids, ``shared_models.messages.consent_report``): whether a manifest was applied (its
sha256, which the hospital can match against its own file), the policy for records it does not name,
records trained on and left out, withdrawals recorded since the node's previous run, how many of its runs
trained on records withdrawn since (``fedemo node withdraw`` names them at the hospital), and whether this
run is one. A run that resumed from a checkpoint of such a run started
from a model trained on withdrawn records; the remedy is to retrain from a checkpoint saved before the
first such run (docs/data.md, "Consent").
"""

from __future__ import annotations

from html import escape
from typing import Any

REMEDY = ("retrain from a checkpoint saved before the first run that trained on the withdrawn records (or from "
          "scratch; a run's own earlier round: fedemo simulate --resume RUN_FOLDER --from-round N), and stop using "
          "models from those runs (docs/data.md, 'Consent')")


def consent_section(config: dict[str, Any], rounds: list[dict[str, Any]], run_name: str) -> dict[str, Any]:
    """Per hospital: the latest consent figures it sent in this run, and what its earlier runs trained on."""
    latest: dict[str, dict] = {}
    for entry in rounds:
        for client in ((entry.get("train") or {}).get("clients") or []):
            if client.get("consent"):
                latest[str(client["client"])] = {**latest.get(str(client["client"]), {}), **client["consent"],
                                                 "round": entry.get("round")}
    resumed = bool(config.get("resumed_parts"))
    clients = []
    for client_id in sorted(latest, key=lambda c: (len(c), c)):
        c = latest[client_id]
        this_run = bool(c.get("this_run_on_withdrawn"))
        clients.append({
            "client": client_id, "manifest": c.get("manifest", ""), "applied": bool(c.get("manifest")),
            "policy": c.get("policy", ""), "used": c.get("used"), "excluded": c.get("excluded"),
            "withdrawn": c.get("withdrawn"), "withdrawn_since_last_run": c.get("withdrawn_new"),
            "tracked": c.get("tracked", False), "runs_on_withdrawn": int(c.get("runs_on_withdrawn") or 0),
            "this_run_on_withdrawn": this_run, "started_from_withdrawn": resumed and this_run,
        })
    affected = [c["client"] for c in clients if c["runs_on_withdrawn"]]
    return {
        "reported": bool(clients),
        "any_manifest": any(c["applied"] for c in clients),
        "clients": clients,
        "hospitals_with_runs_on_withdrawn": affected,
        "remedy": REMEDY if affected else "",
    }


def consent_part(run, report: dict[str, Any]) -> dict[str, Any]:
    """``server.report.build``'s section builder: the ``consent`` key."""
    return {"consent": consent_section(run.config, run.rounds, run.run_dir.name)}


def consent_html(report: dict[str, Any]) -> str:
    """The page's consent section (its own heading), or a sentence when no node reported consent."""
    section = report.get("consent") or {}
    parts = ["<h2>Patients' consent</h2>"]
    if not section.get("reported"):
        parts.append("<p>No hospital reported consent figures in this run (no training round, or nodes of an "
                     "older FedEmo).</p>")
        return "\n".join(parts)
    if not section.get("any_manifest"):
        parts.append("<p><strong>No consent manifest was applied</strong>: every hospital trained on every record "
                     "in its folder.</p>")
    head = ["hospital", "manifest (sha256)", "unnamed records", "trained on", "left out", "of which withdrawn",
            "withdrawals since its last run", "runs that trained on since-withdrawn records"]
    rows = []
    for c in section["clients"]:
        manifest = f"<code>{escape(c['manifest'][:16])}</code>..." if c["applied"] else "<strong>none applied</strong>"
        runs = str(c["runs_on_withdrawn"]) if c["runs_on_withdrawn"] else "none"
        if c["started_from_withdrawn"]:
            runs += " (<strong>this run started from such a model</strong>)"
        elif c["this_run_on_withdrawn"]:
            runs += " (<strong>including this run, before the withdrawal</strong>)"
        if not c["tracked"]:
            runs = "not tracked (the node keeps no state folder)"
        rows.append([escape(c["client"]), manifest, escape(c["policy"] or ""), str(c["used"]), str(c["excluded"]),
                     str(c["withdrawn"]), str(c["withdrawn_since_last_run"]), runs])
    head_html = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    parts.append(f'<div class="scroll"><table><thead><tr>{head_html}</tr></thead><tbody>{body}</tbody></table></div>')
    if section.get("remedy"):
        parts.append(f'<p class="warn">Models of the runs listed were trained on records whose consent was since '
                     f"withdrawn: {escape(section['remedy'])}.</p>")
    parts.append("<p>Counts only: record ids never leave a hospital. A simulated node's left-out count is its "
                 "withdrawals; the records its folder's manifest refuses are counted once by the data check.</p>")
    return "\n".join(parts)
