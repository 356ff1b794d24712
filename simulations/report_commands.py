"""``fedemo verify``, ``fedemo report`` and ``fedemo compare``: the auditor's commands.

    fedemo verify RUN_DIR [--public-key PEM]       is report.json as signed? exit 0 valid, 1 not, 2 unusable input
    fedemo report RUN_DIR [--build]                rebuild report.html from report.json (--build: report.json too)
    fedemo compare RUN_A RUN_B --out DIR           two runs side by side per group
    fedemo compare CONFIG --out DIR [--set k=v] [--a k=v] [--b k=v]
                                                   run CONFIG twice (default A: dp=false, B: dp=true), then compare
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace
from pathlib import Path

from server.report import ReportError
from server.report_compare import ComparisonError
from server.report_signing import SigningError

DEFAULT_A = ["dp=false"]
DEFAULT_B = ["dp=true"]


def _fail(message: str) -> int:
    print(f"fedemo: error: {message}", file=sys.stderr)
    return 2


def verify_command(args: Namespace) -> int:
    from server.report_html import source_digest
    from server.report_signing import verify_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        return _fail(f"{run_dir} is not a folder")
    result = verify_run(run_dir, expected_public_key=args.public_key, html_digest_of=source_digest)
    if result.valid:
        print(f"valid: {run_dir / 'report.json'} is exactly as signed by key {result.key_id}"
              + ("" if args.public_key else " (compare this key id with the coordinator's published one, "
                 "or pass --public-key)"))
        return 0
    print(f"INVALID: {run_dir / 'report.json'}")
    for problem in result.problems:
        print(f"  - {problem}")
    return 1


def report_command(args: Namespace) -> int:
    from server.report_html import write_html

    run_dir = Path(args.run_dir)
    try:
        if args.build:
            from server.report import coordinator_key, read_run, write_report

            run_config = read_run(run_dir)[0].get("run_config", {})  # the key the run itself was told to use
            runs_dir = Path(str(run_config.get("runs-dir") or run_dir)).resolve()
            if not run_dir.resolve().is_relative_to(runs_dir):  # a moved run folder: guard that folder itself
                runs_dir = run_dir.resolve()
            key = coordinator_key(str(run_config.get("signing-key", "")), runs_dir)
            print(f"Built and signed {write_report(run_dir, key)}")
        elif not (run_dir / "report.json").is_file():
            return _fail(f"{run_dir / 'report.json'} is missing; `fedemo report --build {run_dir}` builds and signs "
                         "one from the run's metrics")
        path = write_html(run_dir)
    except (ReportError, SigningError, ValueError) as err:
        return _fail(str(err))
    print(f"Wrote {path}")
    from server.report_signing import verify_run

    verdict = verify_run(run_dir)
    if not verdict.valid:
        print("warning: report.json does not verify, the page shows an altered report:\n  - "
              + "\n  - ".join(verdict.problems), file=sys.stderr)
    return 0


def compare_command(args: Namespace) -> int:
    from server.report_compare import compare_runs

    inputs = [Path(p) for p in args.inputs]
    try:
        if len(inputs) == 2:
            if args.a or args.b or args.overrides:
                return _fail("--set/--a/--b apply only when comparing a CONFIG (one input)")
            run_a, run_b = inputs
        elif len(inputs) == 1 and inputs[0].is_file():
            a, b = (args.a, args.b) if args.a or args.b else (DEFAULT_A, DEFAULT_B)  # default: without vs with DP
            run_a, run_b = run_both(inputs[0], args.overrides, a, b)
        else:
            return _fail("give two run folders, or one run config (TOML file) to run twice")
        path = compare_runs(run_a, run_b, Path(args.out))
    except (ComparisonError, ReportError) as err:
        return _fail(str(err))
    import json

    for line in json.loads(path.read_text())["findings"]:
        print(line)
    print(f"Wrote {path} and {path.with_name('comparison.html')}")
    return 0


def run_both(config: Path, overrides: list[str], a: list[str], b: list[str]) -> tuple[Path, Path]:
    """Run the same configuration twice, differing only in the A and B overrides."""
    from simulations.run_config import load_run_config, parse_overrides
    from simulations.simulate import run_simulation

    common = parse_overrides(overrides)
    base_name = str(load_run_config(config, common)[0].get("run-name") or "")
    stem = base_name or f"{time.strftime('%Y%m%d-%H%M%S')}-compare"
    dirs = []
    for side, extra in (("a", a), ("b", b)):
        print(f"Run {side.upper()}: {config} with {' '.join(extra) or 'no change'}")
        dirs.append(run_simulation(config, {**common, **parse_overrides(extra), "run-name": f"{stem}-{side}"}))
    return dirs[0], dirs[1]
