"""The run report: one signed JSON file that answers an auditor's questions without running code.

How well does the global model work (per round, and per demographic group
with intervals), how sure are we (Wilson intervals, group sizes, suppressed
groups), what privacy did each hospital spend (every DP-SGD figure a node
reported, cross-checked against its ledger where the coordinator can see it),
and was the report altered (``server.report.signing``).

``build_report`` reads only the run folder (config.json, metrics.jsonl,
summary.json, and in simulation the nodes' ledgers), so a report can be
rebuilt for any finished run. The schema is documented in docs/report.md;
``SCHEMA_VERSION`` changes whenever a field changes meaning or disappears.
"""

from __future__ import annotations

import json
import math
import numbers
from logging import ERROR, INFO, WARNING
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.report.baseline import baseline_section, hospitals_section
from server.report.calibration import calibration_report
from server.report.fairness import accuracy_interval as group_accuracy_interval
from server.report.fairness import count_noise_variance, fairness_history, fairness_view
from server.report.ledger_chain import chain_check, recorded_heads
from server.report.threat_model import guarantees
from server.report.signing import default_key_path, load_or_create_key, write_signed
from shared_models.demographic_groups import ATTRIBUTE_GROUPS

SCHEMA_VERSION = 1
REPORT_KIND = "fedemo-run-report"
CONFIDENCE = 0.95  # level of every interval in the report (Wilson for accuracies)
ROUND_METRICS = ("loss", "accuracy", "macro_f1", "uar", "ccc_valence", "ccc_arousal", "eval_examples")
DP_FIELDS = ("epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm", "accountant", "budget")
CLIENT_LEVEL_PREFIXES = ("central-dp", "secagg")


class ReportError(RuntimeError):
    """The run folder lacks what a report needs (named in the message)."""


# --------------------------------------------------------------------------- reading the run folder
def read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """config.json, the metrics.jsonl rounds and summary.json (empty when the run did not finish)."""
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    if not config_path.is_file():
        raise ReportError(f"{config_path} is missing: {run_dir} is not a FedEmo run folder")
    if not metrics_path.is_file():
        raise ReportError(f"{metrics_path} is missing: the run logged no round")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        rounds = []
        for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                rounds.append(json.loads(line))
    except ValueError as err:
        raise ReportError(f"{run_dir}: config.json or metrics.jsonl line {number} is not valid JSON ({err})") from err
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    if config.get("mode") == "centralised":  # an older `fedemo baseline` numbered its lines by epoch only
        rounds = [{"round": r["epoch"], **r} if "round" not in r and "epoch" in r else r for r in rounds]
    return config, rounds, summary


# --------------------------------------------------------------------------- sections
def accuracy_interval(counts: list[list[float]], count_noise: dict[str, Any] | None = None,
                      confidence: float = CONFIDENCE) -> list[float] | None:
    """The global accuracy's interval from the round's summed confusion, as the fairness view computes a group's:
    Wilson for exact counts, with the count noise's variance added for noised ones; None without samples."""
    if sum(map(sum, counts)) <= 0:
        return None
    return group_accuracy_interval(np.asarray(counts, dtype=np.float64), confidence, overall_noise_variance(count_noise))


def overall_noise_variance(count_noise: dict[str, Any] | None) -> float:
    """Noise variance of one cell of the round's overall confusion: logged since the nodes average it over
    attributes; a record from before, whose overall confusion summed the first attribute's groups, gets
    that attribute's group count x a group cell's (the FER2013/CREMA-D/RAF-DB first attribute, sex, has 4)."""
    if not count_noise:
        return 0.0
    if "overall_cell_noise_variance" in count_noise:
        return float(count_noise["overall_cell_noise_variance"])
    return len(ATTRIBUTE_GROUPS["sex"]) * count_noise_variance(count_noise)


def round_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """One round's global metrics, with the accuracy interval and who took part."""
    out: dict[str, Any] = {"round": entry["round"]}
    out.update({k: entry[k] for k in ROUND_METRICS if k in entry})
    if entry.get("central_dp"):
        out["central_dp_epsilon"] = entry["central_dp"].get("epsilon")
    counts = entry.get("confusion", {}).get("counts")
    if counts is not None:  # noised counts (groups_dp): unclipped sums, the interval includes their noise
        out["accuracy_ci"] = accuracy_interval(counts, entry.get("groups_dp"))
        out["confusion"] = counts
    evaluate = entry.get("evaluate") or {}
    train = entry.get("train") or {}
    out["clients_evaluated"] = len(evaluate.get("clients", []))
    out["clients_trained"] = len(train.get("clients", []))
    out["evaluate_failures"] = evaluate.get("failures", [])
    out["train_failures"] = train.get("failures", [])
    out["train_rejected"] = train.get("rejected", [])  # updates the coordinator's screen refused (client, reason)
    if "elapsed_s" in entry:
        out["elapsed_s"] = entry["elapsed_s"]
    return out


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


def fairness_sections(config: dict[str, Any], rounds: list[dict[str, Any]],
                      baseline: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fairness per attribute, fairness settings) from the summed per-group counts of the rounds.

    The figures are those of the last round that logged group counts, through
    ``server.report.fairness.fairness_view`` (which suppresses small groups); each
    attribute also gets its gap history over the rounds.
    """
    with_groups = [r for r in rounds if r.get("groups")]
    run_config = config.get("run_config", {})
    if not with_groups:
        return {}, {"status": "no per-group counts in this run (the data has no demographic attributes, "
                              "or the run predates per-group evaluation)"}
    missing = [k for k in ("fairness-min-group-size", "fairness-gap-threshold") if k not in run_config]
    if missing:
        return {}, {"status": f"run config lacks {', '.join(missing)}; fairness figures not computed"}
    min_size, threshold = int(run_config["fairness-min-group-size"]), float(run_config["fairness-gap-threshold"])
    last = with_groups[-1]
    view = fairness_view(last["groups"], min_group_size=min_size, gap_threshold=threshold, confidence=CONFIDENCE,
                         count_noise=last.get("groups_dp"))  # noised counts: unclipped sums, intervals include noise
    history = fairness_history(with_groups, min_group_size=min_size, gap_threshold=threshold, confidence=CONFIDENCE)
    meaningful = not (baseline or {}).get("no_better_than_majority")
    reason = None if meaningful else (
        "the model is no better than always predicting the majority class: group accuracies and gaps reflect "
        "each group's mix of emotions, not how well the model serves it")
    for attribute, figures in view.items():
        figures["group_order"] = list(figures["groups"])  # canonical JSON sorts keys; keep the dataset's order
        figures["history"] = [{"round": h["round"], **h[attribute]} for h in history if attribute in h]
        figures["meaningful"] = meaningful
        figures["not_meaningful_reason"] = reason
    settings = {"status": "ok", "round": last["round"], "min_group_size": min_size, "gap_threshold": threshold,
                "confidence": CONFIDENCE, "eval_count_noise": last.get("groups_dp"), "meaningful": meaningful,
                "not_meaningful_reason": reason}
    return view, settings


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (canonical JSON has no NaN), numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def build_report(run_dir: Path) -> dict[str, Any]:
    """The report of a run folder, as a plain JSON-ready dict (see docs/report.md)."""
    run_dir = Path(run_dir)
    config, rounds, summary = read_run(run_dir)
    if not rounds:
        raise ReportError(f"{run_dir / 'metrics.jsonl'} holds no round")
    run_config = config.get("run_config", {})
    round_entries = [round_entry(r) for r in rounds]
    baseline = baseline_section(config, rounds[-1], round_entries[-1])
    fairness, fairness_settings = fairness_sections(config, rounds, baseline)
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": {
            "run_id": config.get("run_id", run_dir.name),
            "flower_run_id": config.get("flower_run_id"),
            "data_dir": config.get("data_dir"),
            "mode": config.get("mode", "federated"),  # "centralised": the pooled baseline (fedemo baseline)
            "test_split": config.get("test_split"),  # digest of the test rows where recorded (split_digest.py)
            "versions": config.get("versions", {}),
            "task": run_config.get("task"),
            "dataset": run_config.get("dataset"),
            "model": run_config.get("model"),
            "num_clients": run_config.get("num-supernodes"),
            "rounds_planned": run_config.get("num-server-rounds"),
            "rounds_completed": len(rounds) - 1,
            "finished": bool(summary),
            # stopped early (Ctrl-C: summary's "interrupted"; or killed): fewer rounds than planned
            "incomplete": len(rounds) - 1 < int(run_config.get("num-server-rounds") or 0),
            "interrupted": summary.get("interrupted"),
            # the divergence guard stopped the run (server/rounds/divergence_guard.py): why, and whose weights were kept
            "diverged": summary.get("diverged"),
            # a non-finite aggregation ended the run on the last finite model (server/server_app.py)
            "stopped": summary.get("stopped"),
            "elapsed_s": summary.get("elapsed_s"),
        },
        "config": run_config,
        # each resumed part: its Flower run id, start time and what it changed (only keys a resume may change)
        "resumed_parts": config.get("resumed_parts", []),
        "initial": round_entries[0],
        "final": round_entries[-1],
        "baseline": baseline,
        "rounds": round_entries,
        "hospitals": hospitals_section(config, rounds),
        "privacy": privacy_section(config, rounds, summary, run_dir),
        "fairness": fairness,
        "fairness_settings": fairness_settings,
        "calibration": calibration_report(rounds),  # ECE and reliability, overall and per group (calibration.py)
    }
    return _clean(report)


# --------------------------------------------------------------------------- writing
def coordinator_key(signing_key: str, runs_dir: str | Path) -> Ed25519PrivateKey:
    """The coordinator's signing key (created on first use), refused when it lies in the runs folder.

    The ServerApp calls this at the start of a run, so an unusable key stops
    the run before any training rather than after it.
    """
    return load_or_create_key(default_key_path(signing_key), forbidden_root=Path(runs_dir).resolve())


def report_at_end_of_run(run_dir: Path, key: Ed25519PrivateKey) -> Path | None:
    """The ServerApp's last step: write the signed report; a failure is logged, never raised.

    By now the weights, metrics and summary are on disk; a report problem
    (e.g. malformed group counts) must not turn a finished run into a crash.
    ``fedemo report --build RUN_DIR`` builds it again once the cause is fixed.
    """
    from flwr.common.logger import log

    try:
        path = write_report(run_dir, key)
    except (ReportError, ValueError, KeyError, TypeError, OSError) as err:
        log(ERROR, "No report written for %s: %s (fix the cause, then `fedemo report --build %s`)",
            run_dir, err, run_dir)
        return None
    log(INFO, "Signed report %s and %s; check them with `fedemo verify %s`", path, path.with_suffix(".html"),
        run_dir)
    check = (json.loads(path.read_text(encoding="utf-8")).get("privacy") or {}).get("ledger_check") or {}
    if check.get("ok") is False:  # signed as it is; `fedemo verify` will not call this run valid (exit 4)
        log(WARNING, "Privacy ledger check FAILED: %s", check.get("status"))
    return path


def write_report(run_dir: Path, key: Ed25519PrivateKey) -> Path:
    """Build, sign and write report.json/.sig/.pub and report.html into the run folder."""
    from server.report.html import write_html

    run_dir = Path(run_dir)
    path = write_signed(run_dir, build_report(run_dir), key)
    write_html(run_dir, key)  # signs the page too (report.sig "pages")
    from flwr.common.logger import log
    from server.report.figures import write_figures  # figures/ and rounds.csv for a paper (not signed: derived)

    try:  # the signed report stands without them: a figure problem is a warning, not "no report"
        write_figures(run_dir, json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, OSError) as err:
        log(WARNING, "Report written, but no figures/ for %s: %s (`fedemo report --build %s` writes them again)",
            run_dir, err, run_dir)
    return path
