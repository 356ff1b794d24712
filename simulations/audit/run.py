"""``fedemo audit CONFIG``: a research run with canaries, then the one-run lower bound on epsilon in audit.json.

1. prepare the canaries and draw their secret coins (simulations/audit/plan.py);
2. run the simulation with the canary ClientApp (simulations/audit/canary_app.py);
3. score every canary on the result: ``sample``, white-box gradient canaries: the sum over every DP-SGD step
   of <noisy clipped sum released minus the node's own records' clipped sum, e_i> (the release alone is kept
   beside it, for comparison; simulations/audit/gradient_canaries.py); ``client``: the cosine between the
   canary's direction and the final model delta (final global model minus the initial one);
4. reveal the coins, guess "in" for the top-k scores, and compute the bound (shared_models/privacy_audit/);
5. write audit.json beside the run's other files and sign the report again with its audit section.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared_models.atomic_files import atomic_write_json
from shared_models.privacy_audit.one_run_bound import AUDIT_FILE, audit_scores, ceiling
from shared_models.settings.run_settings import ConfigError, RunSettings
from simulations.audit import plan as plans
from simulations.run_config import prepare_run

CANARY_APP = "simulations.audit.canary_app:app"


def run_audit(config_file: str | Path | None, overrides: dict[str, Any] | None = None, *,
              client_app: str = CANARY_APP) -> Path:
    """Run one audit; returns the run folder (with audit.json). ``client_app``: tests put a broken node here."""
    from simulations.simulate import run_simulation
    from simulations.synthetic.data_prep import prepare_data

    started = time.time()
    overrides = dict(overrides or {})
    config, settings = prepare_run(config_file, overrides, label="audit")
    if settings.audit == "off":
        raise ConfigError("run-config audit = 'off': fedemo audit needs audit = sample or client (--set audit=sample)")
    data_dir = prepare_data(settings) or Path(settings.data_dir)
    extra = {"run-name": config["run-name"]}
    if settings.audit == "client":
        # The canary nodes join the federation; FedAvg (a robust rule would trim them: not what is audited).
        extra.update({"num-supernodes": settings.num_supernodes + settings.audit_canaries, "aggregation": "fedavg"})
        if settings.task != "face":  # the canary nodes hold no audio to send sums of: fixed normalisation
            extra["feature-normalisation"] = "fixed"
    plan = plans.sample_plan(settings, str(data_dir)) if settings.audit == "sample" \
        else plans.client_plan(settings, str(data_dir))
    plan_file = plans.write_plan(plan, Path(settings.runs_dir) / ".audit-plans" / f"{config['run-name']}.json")
    previous = os.environ.get(plans.PLAN_ENV)
    os.environ[plans.PLAN_ENV] = str(plan_file)
    # The data was prepared and checked above for the H hospitals; the engine's own check would count the canary
    # nodes as partitions (they own no data), so it runs unchecked here.
    from simulations import simulate

    checked = simulate.prepare_data
    simulate.prepare_data = lambda run_settings: checked(run_settings, check=False)
    try:
        run_dir = run_simulation(config_file, {**overrides, **extra, "data-dir": str(data_dir)}, client_app=client_app)
    finally:
        simulate.prepare_data = checked
        if previous is None:
            os.environ.pop(plans.PLAN_ENV, None)
        else:
            os.environ[plans.PLAN_ENV] = previous
    run_settings = RunSettings.from_config({**config, **extra, "data-dir": str(data_dir)})
    audit = score_and_bound(run_dir, run_settings, plan, str(data_dir), plan_file)
    audit["wall_clock_s"] = round(time.time() - started, 1)
    atomic_write_json(run_dir / AUDIT_FILE, audit)
    plan_file.unlink()  # the coins now live in audit.json
    plans.initial_path(plan_file).unlink(missing_ok=True)
    plans.norms_path(plan_file).unlink(missing_ok=True)
    plans.norms_path(plan_file).with_suffix(".lock").unlink(missing_ok=True)
    for node in {c.get("node") for c in plan["canaries"]}:
        plans.updates_path(plan_file, node).unlink(missing_ok=True)
    resign_report(run_dir, run_settings)
    print(audit_line(audit))
    return run_dir


def score_and_bound(run_dir: Path, settings: RunSettings, plan: dict[str, Any], data_dir: str,
                    plan_file: Path) -> dict[str, Any]:
    coins = np.array(plan["coins"], dtype=bool)
    extra: dict[str, Any] = {}
    guesses = settings.audit_guesses or None
    if plan["mode"] == "sample":
        scores, score_name, claimed, delta = sample_audit(run_dir, settings, plan, data_dir, plan_file, extra)
    else:
        from simulations.audit.scores import client_scores

        scores, score_name = client_scores(run_dir, plan, plans.initial_path(plan_file)), \
            "cosine between the canary node's direction and the final model delta (final minus initial global model)"
        claimed, delta = client_claim(run_dir, settings)
        extra.update(client_norms(plan, plan_file))
    outcome = audit_scores(scores, coins, significance=settings.audit_significance, delta=delta, guesses=guesses)
    top = ceiling(len(coins), settings.audit_significance, delta, outcome.guess_grid)
    return {
        "kind": "fedemo-audit", "audit_run": True, "mode": plan["mode"],
        "mechanism": "sample-level DP-SGD (dp = true)" if settings.dp else
                     ("client-level central DP (" + settings.central_dp + ")" if settings.central_dp != "off"
                      else "none (no DP: the audit's teeth)"),
        "adjacency": "replace one record: each canary is a record slot whose clipped gradient is +C e_i (coin 1) or "
                     "-C e_i (coin 0), the worst pair replace-one accounting covers" if plan["mode"] == "sample" else
                     "replace one node: each canary node sends its direction at the canary norm (coin 1) or a "
                     "zero update (coin 0)",
        "score": score_name, "m": len(coins), "scores": [float(s) for s in scores], "coins": [int(c) for c in coins],
        "canaries": plan["canaries"], "how_k_chosen": outcome.how_k_chosen, "guess_grid": list(outcome.guess_grid),
        "guesses": outcome.guesses, "correct": outcome.correct, "threshold": outcome.threshold,
        "significance": settings.audit_significance, "significance_per_k": outcome.significance,
        "delta": delta, "lower_bound": outcome.lower_bound, "ceiling": top, "claimed_epsilon": claimed,
        "passed": claimed is None or outcome.lower_bound <= claimed, **extra,
    }


def client_norms(plan: dict[str, Any], plan_file: Path) -> dict[str, Any]:
    """audit.json's account of the canaries' length: the rule, and the norm each round used (with what was measured)."""
    import json

    out: dict[str, Any] = {"canary_norm_rule": plan["canary_norm_rule"], "clipping_norm": plan["clipping_norm"]}
    if plan["canary_norm"]:
        out["canary_norm"] = plan["canary_norm"]
        return out
    path = plans.norms_path(plan_file)
    measured = json.loads(path.read_text()) if path.is_file() else {}
    out["canary_norm_by_round"] = {r: v["median"] for r, v in sorted(measured.items(), key=lambda kv: int(kv[0]))}
    out["honest_update_norms_by_round"] = {r: {"hospitals": v["hospitals"], "norms": v["norms"]}
                                           for r, v in sorted(measured.items(), key=lambda kv: int(kv[0]))}
    return out


def sample_audit(run_dir: Path, settings: RunSettings, plan: dict[str, Any], data_dir: str, plan_file: Path,
                 extra: dict[str, Any]) -> tuple[np.ndarray, str, float | None, float]:
    """White-box gradient canaries' scores, the claim, delta; ``extra`` gets the comparison score and the details."""
    from simulations.audit.gradient_canaries import CANARY_GRADIENT, RELEASED_SCORE, SCORE
    from simulations.audit.scores import gradient_scores

    seen = gradient_scores(plan, plan_file)
    claimed, delta = sample_claim(run_dir, settings, plan, data_dir)
    coins = np.array(plan["coins"], dtype=bool)
    # For comparison only (its bound is not the verdict): the release itself, the records' own gradients in it.
    raw = audit_scores(seen.released, coins, significance=settings.audit_significance, delta=delta,
                       guesses=settings.audit_guesses or None)
    extra.update({
        "canary_gradient": CANARY_GRADIENT, "observation": "white-box: every step's noisy clipped sum (what DP-SGD's "
        "accountant composes), and the node's own records' clipped sum, which DP lets an adversary know",
        "sample_rate_by_hospital": seen.sample_rates, "clipping_norm_by_hospital": seen.clipping_norms,
        "steps_by_hospital": seen.steps, "inclusions": [int(v) for v in seen.inclusions],
        "released_sum": {"score": RELEASED_SCORE, "scores": [float(v) for v in seen.released], "guesses": raw.guesses,
                         "correct": raw.correct, "lower_bound": raw.lower_bound},
    })
    return seen.scores, SCORE, claimed, delta


def sample_claim(run_dir: Path, settings: RunSettings, plan: dict[str, Any], data_dir: str) -> tuple[float | None, float]:
    """The largest training epsilon any node's ledger recorded (None without dp), and the largest node delta."""
    import json

    _, splits = plans.node_rows(settings, data_dir)
    sizes = [len(train) for train, _ in splits]  # gradient canaries are no records of the node's data set
    delta = settings.dp_delta or 1.0 / (10 * min(sizes))  # each node's default 1/(10 n): the largest is the weakest
    if not settings.dp:
        return None, delta
    epsilons = []
    with open(run_dir / "metrics.jsonl") as lines:
        for line in lines:
            for client in (json.loads(line).get("train") or {}).get("clients", []):
                spent = (client.get("dp") or {}).get("epsilon")
                if spent is not None:
                    epsilons.append(float(spent))
    return (max(epsilons) if epsilons else 0.0), delta


def client_claim(run_dir: Path, settings: RunSettings) -> tuple[float | None, float]:
    """The run's client-level epsilon from its release journal (None without central-dp), and its delta."""
    import json

    from server.privacy.central_dp import RELEASES_FILE, central_delta, epsilon_of_releases

    delta = central_delta(settings, settings.num_supernodes)
    if settings.central_dp == "off":
        return None, delta
    journal = json.loads((run_dir / RELEASES_FILE).read_text())
    return epsilon_of_releases([r["effective_noise_multiplier"] for r in journal["releases"]], journal["delta"]), delta


def resign_report(run_dir: Path, settings: RunSettings) -> None:
    """The signed report again, now that audit.json exists (its audit section is part of what is signed)."""
    from server.report.build import coordinator_key, report_at_end_of_run

    report_at_end_of_run(run_dir, coordinator_key(settings.signing_key, settings.runs_dir))


def audit_line(audit: dict[str, Any]) -> str:
    claim = "no DP claimed" if audit["claimed_epsilon"] is None else f"claimed epsilon {audit['claimed_epsilon']:.2f}"
    verdict = "" if audit["claimed_epsilon"] is None else ("  PASSED" if audit["passed"] else "  FAILED: above the claim")
    return (f"[fedemo] audit ({audit['mode']}, m = {audit['m']}): {audit['correct']} of {audit['guesses']} guesses "
            f"right; empirical epsilon >= {audit['lower_bound']:.2f} (significance {audit['significance']}, delta "
            f"{audit['delta']:.2g}; at most {audit['ceiling']:.2f} with m canaries), {claim}{verdict}")


def central_noise_for(epsilon: float, releases: int, delta: float) -> float:
    """The central-dp-noise-multiplier whose ``releases`` full rounds spend ``epsilon`` at ``delta`` (bisection)."""
    from server.privacy.central_dp import epsilon_after

    low, high = 0.05, 200.0
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (low, mid) if epsilon_after(mid, releases, delta) <= epsilon else (mid, high)
    return high
