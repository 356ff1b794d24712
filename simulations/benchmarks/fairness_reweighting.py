"""Effect of fairness-aware training: the same federation without and with group reweighting.

    python -m simulations.benchmarks.fairness_reweighting [CONFIG] [--attribute race] [--set key=value ...]

Runs CONFIG (default configs/quickstart.toml) twice, with ``fairness-reweight``
off and set to the attribute, and prints each run's final accuracy and the
attribute's worst-group accuracy, gap and equalized-odds difference with their
95% intervals (server/report/fairness.py). It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from server.report.fairness import fairness_view
from simulations.run_config import parse_overrides
from simulations.simulate import run_simulation

REPO = Path(__file__).resolve().parents[2]


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[-]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "quickstart.toml"))
    parser.add_argument("--attribute", default="race")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    with tempfile.TemporaryDirectory() as tmp:
        base = {"runs-dir": str(Path(tmp) / "runs"), "data-dir": str(Path(tmp) / "data"), **overrides}
        for reweight in ("", args.attribute):
            run_dir = run_simulation(args.config, {**base, "fairness-reweight": reweight,
                                                   "run-name": f"reweight-{reweight or 'off'}"})
            final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
            config = json.loads((run_dir / "config.json").read_text())["run_config"]
            view = fairness_view(final["groups"], min_group_size=config["fairness-min-group-size"],
                                 gap_threshold=config["fairness-gap-threshold"])[args.attribute]
            worst, gap, eod = view["worst_group"], view["accuracy_gap"], view["equalized_odds_difference"]
            print(f"fairness-reweight={reweight or 'off':10s} accuracy {final['accuracy']:.3f}  "
                  f"worst {args.attribute} group {worst['group']} {worst['accuracy']:.3f} {_ci(worst['accuracy_ci'])}  "
                  f"gap {gap['value']:.3f} {_ci(gap['ci'])}  equalized-odds diff {eod['value']:.3f} {_ci(eod['ci'])}",
                  flush=True)


if __name__ == "__main__":
    main()
