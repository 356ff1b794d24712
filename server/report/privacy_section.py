"""The report's privacy section: every node's DP-SGD spend as reported, its evaluation-count epsilon,
client-level DP and secure aggregation, with the ledger cross-check (``server.report.ledger_check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.report.ledger_chain import recorded_heads
from server.report.ledger_check import check_ledgers
from server.report.threat_model import guarantees

DP_FIELDS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm", "accountant", "budget")


def privacy_section(config: dict[str, Any], rounds: list[dict[str, Any]], summary: dict[str, Any],
                    run_dir: Path) -> dict[str, Any]:
    """Every node's DP-SGD spend as it reported it, per round, checked against its ledger when visible."""
    run_config = config.get("run_config", {})
    per_client: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for entry in rounds:
        for client in (entry.get("train") or {}).get("clients", []):
            if "dp" in client:
                per_client.setdefault(client["client"], []).append((entry["round"], client["dp"]))

    eval_history = evaluation_epsilons(rounds)
    eval_heads: dict[str, list[tuple[int, str]]] = {}
    for entry in rounds:
        for client in (entry.get("evaluate") or {}).get("clients", []):
            if client.get("ledger_head"):
                eval_heads.setdefault(str(client["client"]), []).append((entry["round"], client["ledger_head"]))
    eval_epsilons = {c: h[-1]["epsilon"] for c, h in eval_history.items()}
    clients = []
    for client_id in sorted(per_client, key=lambda c: (len(c), c)):
        history = per_client[client_id]
        latest = history[-1][1]
        item: dict[str, Any] = {"client_id": client_id}
        item.update({k: latest.get(k) for k in DP_FIELDS})
        item["steps"] = sum(int(dp.get("steps", 0)) for _, dp in history)
        item["steps_total_ledger"] = latest.get("steps_total")
        item["rounds_trained"] = len(history)
        item["budget_remaining"] = latest.get("budget_remaining")
        item["history"] = [{"round": r, "epsilon": dp.get("epsilon"), "steps": dp.get("steps"),
                            "noise_multiplier": dp.get("noise_multiplier"), "sample_rate": dp.get("sample_rate")}
                           for r, dp in history]
        # what the ledger check requires the node's chain to hold: heads after training and after noised counts
        item["ledger_heads"] = recorded_heads(history, eval_heads.get(client_id, []))
        item["eval_epsilon"] = eval_epsilons.get(client_id)
        clients.append(item)

    declined = [{"round": entry["round"], **failure} for entry in rounds
                for failure in (entry.get("train") or {}).get("failures", []) if "declined" in failure.get("reason", "")]
    ledger_check = check_ledgers(clients, config, run_dir)
    section: dict[str, Any] = {
        "guarantees": guarantees(run_config),  # what each figure below means, and what left the nodes in plain
        "sample_level_dp": bool(run_config.get("dp", False)),
        "settings": {k: run_config[k] for k in sorted(run_config) if k.startswith("dp")},
        "max_epsilon": max((c["epsilon"] for c in clients if c["epsilon"] is not None), default=None),
        # noised evaluation counts: their own epsilon per hospital (test records; parallel to training's)
        "max_eval_epsilon": max(eval_epsilons.values(), default=None),
        "evaluation_epsilons": [{"client_id": c, "epsilon": eval_epsilons[c], "history": eval_history[c]}
                                for c in sorted(eval_history, key=lambda c: (len(c), c))],
        "clients": clients,
        "declined_rounds": declined,
        "ledger_check": ledger_check,
    }
    client_level = {k: run_config[k] for k in sorted(run_config) if k.startswith("central-dp")}
    accounting = (summary.get("privacy") or {}).get("central_dp") or summary.get("central_dp")
    if client_level or accounting:
        section["client_level_dp"] = {
            "enabled": run_config.get("central-dp", "off") not in ("off", False, ""),
            "settings": client_level, "accounting": accounting,
            "history": [{"round": r["round"], **r["central_dp"]} for r in rounds if r.get("central_dp")]}
    secagg = {k: run_config[k] for k in sorted(run_config) if k.startswith("secagg") or k == "secure-aggregation"}
    if secagg or "secagg" in summary:
        section["secure_aggregation"] = {
            "enabled": bool(run_config.get("secure-aggregation", False)),
            "settings": secagg, "summary": summary.get("secagg"),
            "history": [{"round": r["round"], **r["train"]["secagg"]} for r in rounds
                        if (r.get("train") or {}).get("secagg")]}
    return section


def evaluation_epsilons(rounds: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per client, the evaluation-count epsilon it reported after each noised evaluation (``grp-dp-epsilon-spent``).

    metrics.jsonl keeps them per round under ``groups_dp.epsilon_by_client``;
    this epsilon covers the node's test records and is separate from its
    training epsilon (docs/privacy.md: parallel composition over the split).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in rounds:
        for client_id, epsilon in ((entry.get("groups_dp") or {}).get("epsilon_by_client") or {}).items():
            out.setdefault(str(client_id), []).append({"round": entry["round"], "epsilon": epsilon})
    return out
