"""The measured table of docs/privacy.md "Empirical audit": one-run audits on the 50-hospital DP configs.

``python -m simulations.benchmarks.audit_table [--rounds R] [--only face50_dp:client:8 ...] [--out FILE]``
runs, for face50_dp and voice50_dp, no DP / epsilon 8 / epsilon 1, a client-level audit (canary nodes under
central-dp server-fixed, noise multiplier calibrated to the epsilon over the run's rounds; without DP the
canaries are as long as the round's median honest update) and a sample-level audit (canaries in DP-SGD), and
normal runs of face50_dp (MODE ``normal``: the sample cell's config; ``normal-client``: the client cell's)
without an audit, for the wall-clock cost.
Each finished cell is appended to FILE (JSON lines) and printed, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CANARIES = {"face50_dp": 1000, "voice50_dp": 1000}  # white-box gradient canaries: no records needed
CLIENT_CANARIES = 1000  # canary nodes: a model copy per round each, no data, no model built (ceiling 4.6)


def cell_overrides(config: str, mode: str, epsilon: float | None, rounds: int) -> dict:
    common = {"num-server-rounds": rounds, "audit": mode, "runs-dir": str(REPO / "runs" / "audit-table"),
              "divergence-rounds": 0}  # without DP's clipping the DP recipe's loss jumps in round 1: keep training
    if mode == "sample":  # delta 1e-5 as the client cells (the default 1/(10 n) caps the bound near 2.2)
        common.update({"audit-canaries": CANARIES[config], "dp-delta": 1e-5})
        if epsilon is None:
            return {**common, "dp": False, "eval-dp-noise-multiplier": 0.0}
        return {**common, "dp": True, "dp-epsilon": epsilon}
    common.update({"audit-canaries": CLIENT_CANARIES, **client_mechanism(epsilon, rounds)})
    return common


def client_mechanism(epsilon: float | None, rounds: int) -> dict:
    """The client cells' mechanism: no DP-SGD, no server momentum; central-dp server-fixed at ``epsilon``."""
    from simulations.audit.run import central_noise_for

    keys = {"dp": False, "eval-dp-noise-multiplier": 0.0, "server-momentum": 0.0, "central-dp-delta": 1e-5}
    if epsilon is None:
        return keys
    return {**keys, "central-dp": "server-fixed",
            "central-dp-noise-multiplier": round(central_noise_for(epsilon, rounds, 1e-5), 4)}


def tabulate(rows: list[dict]) -> str:
    """docs/privacy.md's measured table: one line per cell, the normal runs' wall clock beside."""
    lines = ["| config | audit | run | rounds | m | right / guesses | lower bound | ceiling | claimed epsilon | verdict "
             "| wall clock (simulation) | load |", "|" + " --- |" * 12]
    for r in rows:
        run = "no DP" if r["epsilon"] is None else f"epsilon {r['epsilon']:g}"
        if r["mode"].startswith("normal"):
            lines.append(f"| {r['config']} | none ({r['mode']}) | {run} | {r['rounds']} | | | | | | "
                         f"| {r['wall_clock_s']:.0f} s ({r['simulation_s']:.0f} s) | {r['load_at_start']} |")
            continue
        verdict = "no claim" if r["claimed"] is None else ("PASSED" if r["passed"] else "**FAILED**")
        claimed = "none" if r["claimed"] is None else f"{r['claimed']:.2f}"
        lines.append(f"| {r['config']} | {r['mode']}-level | {run} | {r['rounds']} | {r['m']} | {r['correct']} / "
                     f"{r['guesses']} | {r['lower_bound']:.2f} | {r['ceiling']:.2f} | {claimed} | {verdict} "
                     f"| {r['wall_clock_s']:.0f} s ({r['simulation_s']:.0f} s) | {r.get('load_at_start', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="cells as CONFIG:MODE:EPSILON (none for no DP)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "audit-table.jsonl")
    parser.add_argument("--client-canaries", type=int, default=1000, help="m of the client cells")
    parser.add_argument("--tabulate", type=Path, default=None, help="print FILE's rows as docs/privacy.md's table")
    args = parser.parse_args()
    if args.tabulate:
        print(tabulate([json.loads(line) for line in args.tabulate.read_text().splitlines() if line.strip()]))
        return
    globals()["CLIENT_CANARIES"] = args.client_canaries
    from simulations.audit.run import run_audit
    from simulations.simulate import run_simulation

    cells = [(c, m, e) for m in ("client", "sample") for c in ("face50_dp", "voice50_dp") for e in (None, 8.0, 1.0)]
    cells.insert(3, ("face50_dp", "normal-client", 8.0))  # the client cell's config without an audit (cost)
    cells.insert(10, ("face50_dp", "normal", 8.0))  # the sample cell's config without an audit (cost)
    if args.only:
        cells = [(c, m, None if e == "none" else float(e)) for c, m, e in (x.split(":") for x in args.only)]
    for config, mode, epsilon in cells:
        started, load = time.time(), os.getloadavg()[0]
        if mode.startswith("normal"):  # the same run without an audit: the cost figure
            keys = {"num-server-rounds": args.rounds, "runs-dir": str(REPO / "runs" / "audit-table"),
                    "divergence-rounds": 0}
            keys.update(client_mechanism(epsilon, args.rounds) if mode == "normal-client" else
                        {"dp-epsilon": epsilon or 8.0, "dp-delta": 1e-5})
            run_dir = run_simulation(REPO / "configs" / f"{config}.toml", keys)
            row = {"config": config, "mode": mode + " run (no audit)", "epsilon": epsilon, "rounds": args.rounds}
        else:
            run_dir = run_audit(REPO / "configs" / f"{config}.toml", cell_overrides(config, mode, epsilon, args.rounds))
            audit = json.loads((run_dir / "audit.json").read_text())
            row = {"config": config, "mode": mode, "epsilon": epsilon, "rounds": args.rounds, "m": audit["m"],
                   "guesses": audit["guesses"], "correct": audit["correct"], "lower_bound": audit["lower_bound"],
                   "ceiling": audit["ceiling"], "claimed": audit["claimed_epsilon"], "passed": audit["passed"],
                   "delta": audit["delta"], "canary_norm": audit.get("canary_norm", audit.get("canary_norm_by_round")),
                   "black_box_bound": (audit.get("black_box") or {}).get("lower_bound")}
        row["load_at_start"] = round(load, 1)
        summary = json.loads((run_dir / "summary.json").read_text())
        row.update({"wall_clock_s": round(time.time() - started, 1), "simulation_s": summary.get("wall_clock_s"),
                    "run_dir": str(run_dir)})
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(row, flush=True)

if __name__ == "__main__":
    main()
