"""The ledger cross-check: each node's reported DP figures against its privacy ledger (simulation only).

Deployed nodes keep their ledgers at the hospital; there the check says the
ledgers are not available rather than guessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.report.ledger_chain import chain_check


def ledger_path(client_id: str, config: dict[str, Any], run_dir: Path) -> Path:
    """Where a simulated node keeps its ledger (client/client_app.py open_ledger)."""
    from shared_models.privacy_ledger import LEDGER_FILE, simulated_state_dir

    state_dir = config.get("run_config", {}).get("state-dir", "")
    root = Path(state_dir) if state_dir else Path(run_dir) / "node-state"
    return simulated_state_dir(root, client_id) / LEDGER_FILE


def check_ledgers(clients: list[dict[str, Any]], config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Compare each client's reported figures with its ledger's record of this run (simulation only).

    Deployed nodes keep their ledgers at the hospital; the coordinator then
    has only what they reported, and the check says so.
    """
    from shared_models.privacy_ledger import LedgerError, PrivacyLedger

    run_key = str(config.get("flower_run_id", ""))
    run_keys = {run_key, *(str(k) for k in config.get("resumed_flower_run_ids", []))}  # a resumed run has several
    configured = float((config.get("run_config") or {}).get("dp-epsilon") or 0.0)
    results, mismatched, missing, widened_count, ahead_count, chain_broken = [], 0, 0, 0, 0, 0
    for client in clients:
        path = ledger_path(client["client_id"], config, run_dir)
        if not path.is_file():
            if client.get("ledger_heads") and (path.parent.is_dir() or any(path.parent.parent.glob(f"*/{path.name}"))):
                # Simulation: the coordinator sees this node's state folder (or its neighbours' ledgers), so a
                # missing ledger was deleted, not kept at a hospital; its recorded heads are what is lost.
                mismatched += 1
                chain_broken += 1
                results.append({"client_id": client["client_id"], "status": "missing",
                                "differing_fields": ["ledger deleted: the coordinator recorded its chain heads"],
                                "chain": {"status": "missing", "ok": False,
                                          "heads_recorded": len(client["ledger_heads"]),
                                          "missing_rounds": sorted({h["round"] for h in client["ledger_heads"]})}})
                continue
            missing += 1
            results.append({"client_id": client["client_id"], "status": "not available"})
            continue
        try:
            ledger = PrivacyLedger.load(path)
        except LedgerError as err:
            mismatched += 1
            chain_broken += bool(client.get("ledger_heads"))
            results.append({"client_id": client["client_id"], "status": "unreadable", "detail": str(err),
                            "chain": chain_check(path, client.get("ledger_heads") or [])})
            continue
        events = [e for e in ledger.events if e.run in run_keys and e.kind == "train"]
        last = events[-1] if events else None
        recorded = {
            "epsilon": last.epsilon_after if last else None,
            "delta": last.delta if last and last.delta is not None else ledger.delta,  # the one it held at
            "noise_multiplier": last.noise_multiplier if last else None,
            "sample_rate": last.sample_rate if last else None,
            "max_grad_norm": last.max_grad_norm if last else None,
            "accountant": ledger.accountant,
            "budget": min(ledger.stored_budget, configured) if configured else ledger.stored_budget,
            "steps": sum(e.steps for e in events),
            "rounds_trained": len(events),
        }
        differ = sorted(k for k, v in recorded.items() if client.get(k) != v)
        # The evaluation-count epsilon the node reported must be one its ledger recorded in this run (the
        # ledger may be ahead: a release whose reply the coordinator never used still counts there).
        eval_events = [e for e in ledger.events if e.run in run_keys and e.kind == "eval-counts"]
        if client.get("eval_epsilon") is not None and client["eval_epsilon"] not in {
                e.epsilon_after for e in eval_events}:
            differ.append("eval_epsilon")
        # The hash chain must still hold every head the node reported after a spend (deleted events, a
        # fresh ledger in place of the old one, a re-hashed shorter history: all drop recorded heads).
        chain = chain_check(path, client.get("ledger_heads") or [])
        chain_broken += not chain["ok"]
        # A round a node trained (and spent) whose update the coordinator never aggregated, e.g. the one in
        # flight when a resumed run's coordinator died: the ledger is ahead of the report, which is sound
        # (the spend is counted); its epsilon, not the reported one, is the hospital's.
        reported_rounds = sorted(h["round"] for h in client.get("history", []))
        ledger_rounds = sorted(e.round for e in events)
        ahead = bool(differ) and chain["ok"] and len(ledger_rounds) > len(reported_rounds) and all(
            ledger_rounds.count(r) >= reported_rounds.count(r) for r in set(reported_rounds))
        # The configured budget binds: a ledger file claiming more is flagged, and so is any spend past it.
        # Each kind's epsilon is checked against the budget on its own (parallel composition over the split).
        latest = next((e.epsilon_after for e in reversed(ledger.events) if e.kind == "train"), 0.0)
        latest_eval = next((e.epsilon_after for e in reversed(ledger.events) if e.kind == "eval-counts"), 0.0)
        widened = bool(configured) and ledger.stored_budget > configured
        over = bool(configured) and max(latest, latest_eval) > configured * (1 + 1e-9)
        widened_count += widened
        ahead_count += ahead and not over
        differ += ["epsilon above the configured dp-epsilon"] if over else []
        differ += [] if chain["ok"] else ["ledger chain lacks heads the coordinator recorded (rounds "
                                          + ", ".join(map(str, chain["missing_rounds"])) + ")"]
        mismatched += bool(differ) and not (ahead and not over)
        try:
            shown = str(path.relative_to(run_dir))
        except ValueError:
            shown = str(path)
        # The ledger's own latest records (all runs); recomputing them with the accountant (ledger.spent())
        # is the ledger's check, not the report's.
        effective = recorded["budget"]
        status_of = "match" if not differ else ("ledger ahead" if ahead and not over else "mismatch")
        results.append({"client_id": client["client_id"], "status": status_of,
                        "ledger": shown, "differing_fields": differ, "ledger_epsilon": latest,
                        "ledger_eval_epsilon": latest_eval,
                        "ledger_remaining": max(0.0, effective - latest), "ledger_stored_budget": ledger.stored_budget,
                        "stored_budget_larger_than_configured": widened, "chain": chain})
    if not clients:
        status = "no DP-SGD training in this run"
    elif missing == len(clients):
        status = "not available (ledgers stay on the nodes)"
    elif mismatched:
        status = f"{mismatched} of {len(clients)} clients differ from their ledgers"
    else:
        matched = len(clients) - missing - ahead_count
        status = (f"all {matched} ledgers match" if not ahead_count else f"{matched} ledgers match") + (
            f"; {missing} not available" if missing else "")
    if ahead_count:
        status += (f"; {ahead_count} ledger(s) record training the coordinator never aggregated (spent all the "
                   "same: their ledger epsilon is the hospital's)")
    if chain_broken:
        status += (f"; {chain_broken} ledger(s) no longer hold the chain heads their node reported (events deleted "
                   "or the ledger replaced: its spend is not all on record)")
    if widened_count:
        status += (f"; {widened_count} ledger file(s) store a budget larger than the configured dp-epsilon "
                   f"{configured:g} (flagged: the configured budget was enforced)")
    return {"status": status, "ok": mismatched == 0, "run_key": run_key, "configured_budget": configured or None,
            "budget_widened": widened_count, "chain_broken": chain_broken, "clients": results}
