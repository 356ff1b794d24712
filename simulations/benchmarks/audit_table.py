"""The measured table of docs/privacy.md "Empirical audit": one-run audits on the 50-hospital DP configs.

``python -m simulations.benchmarks.audit_table [--rounds R] [--only face50_dp:sample:8 ...] [--out FILE]``
runs, for face50_dp and voice50_dp, no DP / epsilon 8 / epsilon 1, a sample-level audit (canary records in
DP-SGD) and a client-level audit (canary nodes under central-dp server-fixed, noise multiplier calibrated to
the epsilon over the run's rounds), and a normal run of face50_dp at epsilon 8 for the wall-clock cost.
Each finished cell is appended to FILE (JSON lines) and printed, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CANARIES = {"face50_dp": 1000, "voice50_dp": 300}  # voice50's hospitals hold about 400 test clips in all
CLIENT_CANARIES = 500  # canary nodes (each one a message per round)


def cell_overrides(config: str, mode: str, epsilon: float | None, rounds: int) -> dict:
    from simulations.audit.run import central_noise_for

    common = {"num-server-rounds": rounds, "audit": mode, "runs-dir": str(REPO / "runs" / "audit-table"),
              "divergence-rounds": 0}  # without DP's clipping the DP recipe's loss jumps in round 1: keep training
    if mode == "sample":
        common["audit-canaries"] = CANARIES[config]
        if epsilon is None:
            return {**common, "dp": False, "eval-dp-noise-multiplier": 0.0}
        return {**common, "dp": True, "dp-epsilon": epsilon}
    common.update({"audit-canaries": CLIENT_CANARIES, "dp": False, "eval-dp-noise-multiplier": 0.0,
                   "server-momentum": 0.0, "central-dp-delta": 1e-5})
    if epsilon is None:
        return common
    return {**common, "central-dp": "server-fixed",
            "central-dp-noise-multiplier": round(central_noise_for(epsilon, rounds, 1e-5), 4)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="cells as CONFIG:MODE:EPSILON (none for no DP)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "audit-table.jsonl")
    args = parser.parse_args()
    from simulations.audit.run import run_audit
    from simulations.simulate import run_simulation

    cells = [(c, m, e) for m in ("sample", "client") for c in ("face50_dp", "voice50_dp") for e in (None, 8.0, 1.0)]
    cells.insert(2, ("face50_dp", "normal", 8.0))  # MODE "normal": the same config without an audit (cost)
    if args.only:
        cells = [(c, m, None if e == "none" else float(e)) for c, m, e in (x.split(":") for x in args.only)]
    for config, mode, epsilon in cells:
        started = time.time()
        if mode == "normal":  # the same run without an audit: the cost figure
            run_dir = run_simulation(REPO / "configs" / f"{config}.toml", {
                "num-server-rounds": args.rounds, "runs-dir": str(REPO / "runs" / "audit-table"),
                "dp-epsilon": epsilon or 8.0})
            row = {"config": config, "mode": "normal run", "epsilon": epsilon, "rounds": args.rounds}
        else:
            run_dir = run_audit(REPO / "configs" / f"{config}.toml", cell_overrides(config, mode, epsilon, args.rounds))
            audit = json.loads((run_dir / "audit.json").read_text())
            row = {"config": config, "mode": mode, "epsilon": epsilon, "rounds": args.rounds, "m": audit["m"],
                   "guesses": audit["guesses"], "correct": audit["correct"], "lower_bound": audit["lower_bound"],
                   "ceiling": audit["ceiling"], "claimed": audit["claimed_epsilon"], "passed": audit["passed"]}
        summary = json.loads((run_dir / "summary.json").read_text())
        row.update({"wall_clock_s": round(time.time() - started, 1), "simulation_s": summary.get("wall_clock_s"),
                    "run_dir": str(run_dir)})
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(row, flush=True)

if __name__ == "__main__":
    main()
