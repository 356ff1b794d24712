"""The researchers' ``fedemo`` commands: simulate a federation, train the pooled baseline, compare runs, write data.

    fedemo simulate CONFIG [--set key=value ...]
    fedemo baseline CONFIG [--set key=value ...] [--epochs N]
    fedemo evaluate RUN_DIR [--out FILE]
    fedemo compare RUN_A RUN_B --out DIR  |  fedemo compare CONFIG --out DIR [--a k=v] [--b k=v]
    fedemo plot RUN... [--out DIR]
    fedemo data synth DATASET --out DIR [--n N] [--seed S] [--with-faces]

``simulations.cli`` mounts them; heavy imports wait inside each command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from server.rounds.console import VerboseFlag

DEFAULT_A = ["dp=false"]  # compare CONFIG without --a/--b: the cost of DP
DEFAULT_B = ["dp=true"]


def add_research_commands(commands: argparse._SubParsersAction, data_commands: argparse._SubParsersAction) -> None:
    """``simulate``, ``baseline`` and ``compare`` at the top level, ``synth`` under ``fedemo data``."""
    add_simulate_command(commands)

    p = commands.add_parser("baseline", help="train the same model centrally on the pooled client data")
    _add_config_args(p)
    p.add_argument("--epochs", type=int, default=None, help="default: rounds x local epochs of the config")
    p.set_defaults(func=baseline_command)

    p = commands.add_parser("evaluate", help="exact accuracy of a simulated run's final model on every node's "
                                             "test rows (research figure beside the report's noised one)")
    p.add_argument("run", type=Path, help="a finished simulation's run folder")
    p.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    p.set_defaults(func=evaluate_command)

    p = commands.add_parser("compare", help="two runs side by side per group (e.g. without and with DP)")
    p.add_argument("inputs", nargs="+", help="two run folders, or one run config (TOML) to run twice")
    p.add_argument("--out", required=True, type=Path, help="folder for comparison.json and comparison.html")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="CONFIG mode: override for both runs (repeatable)")
    p.add_argument("--a", action="append", default=[], metavar="KEY=VALUE", help="CONFIG mode: override for run A only (without --a/--b: A dp=false, B dp=true)")
    p.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="CONFIG mode: override for run B only")
    p.add_argument("--allow-different-test-rows", action="store_true",
                   help="compare runs scored on different test rows anyway (every output then says so)")
    p.set_defaults(func=compare_command)

    p = commands.add_parser("plot", help="overlay runs or seeds: mean and 95%% interval per round (SVG, PNG, CSV)")
    p.add_argument("runs", nargs="+", type=Path, help="run folders; runs differing only in seed are averaged")
    p.add_argument("--out", type=Path, default=Path("fedemo-plot"),
                   help="folder for overlay.csv, runs.csv and the figures (default: ./fedemo-plot)")
    p.set_defaults(func=plot_command)

    p = data_commands.add_parser("synth", help="write a synthetic dataset in a published format")
    p.add_argument("dataset", choices=["fer2013", "rafdb", "cremad", "ravdess"])
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--n", type=int, default=3000, help="number of samples (faces or clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-faces", action="store_true", help="cremad: also write a face frame per clip (fusion)")
    p.add_argument("--consent-refusal-rate", type=float, default=None, metavar="R",
                   help="also write consent.csv naming every record, each refused with probability R (docs/data.md)")
    p.set_defaults(func=synth_command)


def evaluate_command(args: argparse.Namespace) -> int:
    from simulations.exact_evaluation import evaluate_command as run  # torch loads here, not at `fedemo --help`

    return run(args)


# --- fedemo simulate -------------------------------------------------------------------------------


def add_simulate_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("simulate", help="run a federated simulation on Flower's simulation engine")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue that run from its last completed round (its own config; --set still applies)")
    p.add_argument("--from-round", type=int, default=None, metavar="N",
                   help="with --resume: go back to round N's kept checkpoint (checkpoints/round-N.npz) and train on "
                   "from there, e.g. without records whose consent was since withdrawn")
    p.add_argument("--verbose", action=VerboseFlag)  # sets FEDEMO_VERBOSE: Flower's own log lines show too
    p.set_defaults(func=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    if args.resume and args.config:
        print("fedemo: error: --resume takes the run's own config; give no CONFIG (use --set to change a key)",
              file=sys.stderr)
        return 2
    overrides = _checked_overrides(args)  # a mistyped key is answered before torch and Flower load
    if args.from_round is not None:
        if not args.resume:
            print("fedemo: error: --from-round goes with --resume RUN_DIR", file=sys.stderr)
            return 2
        from server.record.checkpoint import roll_back

        print(f"Rolled {args.resume} back to {roll_back(Path(args.resume), args.from_round)}")
    from simulations.simulate import run_simulation

    run_dir = run_simulation(args.config, overrides, resume=args.resume)  # ends with the one summary line
    interrupted = json.loads((run_dir / "summary.json").read_text()).get("interrupted")
    if interrupted:  # 130: the shell's code for a run stopped by Ctrl-C
        print(f"Interrupted after round {interrupted['rounds_done']} of {interrupted['planned_rounds']}; "
              + (f"to continue: {interrupted['resume']}" if interrupted.get("resume") else "start it again to train"))
        return 130
    return 0


# --- fedemo baseline, compare, data synth ----------------------------------------------------------


def baseline_command(args: argparse.Namespace) -> int:
    overrides = _checked_overrides(args)
    from simulations.centralised import run_centralised

    run_dir = run_centralised(args.config, overrides, epochs=args.epochs)
    _print_summary(run_dir)
    print(f"Signed report {run_dir / 'report.html'}, figures {run_dir / 'figures'}; the federated gap: "
          f"`fedemo compare RUN_DIR {run_dir} --out DIR` with a federated run of the same config")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from server.report.build import ReportError
    from server.report.compare import ComparisonError, compare_runs

    inputs = [Path(p) for p in args.inputs]
    try:
        if len(inputs) == 2:
            if args.a or args.b or args.overrides:
                return fail("--set/--a/--b apply only when comparing a CONFIG (one input)")
            run_a, run_b = inputs
        elif len(inputs) == 1 and inputs[0].is_file():
            a, b = (args.a, args.b) if args.a or args.b else (DEFAULT_A, DEFAULT_B)
            run_a, run_b = run_both(inputs[0], args.overrides, a, b)
        else:
            return fail("give two run folders, or one run config (TOML file) to run twice")
        path = compare_runs(run_a, run_b, Path(args.out), test_splits={"a": test_split(run_a), "b": test_split(run_b)},
                            allow_different_test_rows=args.allow_different_test_rows)
    except (ComparisonError, ReportError) as err:
        return fail(str(err))
    for line in json.loads(path.read_text())["findings"]:
        print(line)
    print(f"Wrote {path} and {path.with_name('comparison.html')}")
    return 0


def test_split(run_dir: Path) -> dict | None:
    """The digest of a simulated run's test rows, recomputed from its data-dir (None: deployed, or no run here).

    Deployed runs record no data-dir: their rows stay at the hospitals. A
    data-dir that is gone or unreadable gives {"error": why}; compare then
    cannot confirm the rows.
    """
    from shared_models.config_error import ConfigError
    from shared_models.dataset_format_error import DatasetFormatError
    from simulations.split_digest import split_fingerprint

    try:
        config = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # compare names what is missing
    try:
        return split_fingerprint(config.get("run_config") or {}, config.get("data_dir"))
    except (ConfigError, DatasetFormatError, OSError, ValueError) as err:
        return {"error": f"{run_dir}: {err}"}


def plot_command(args: argparse.Namespace) -> int:
    from server.report.overlay import OverlayError, overlay

    try:
        written = overlay(args.runs, args.out)
    except OverlayError as err:
        return fail(str(err))
    print(f"Wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
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


def synth_command(args: argparse.Namespace) -> int:
    from simulations.synthetic.synthetic_data import synthesize

    started = time.time()
    out = synthesize(args.dataset, args.out, args.n, args.seed, with_faces=args.with_faces)
    print(f"Wrote synthetic {args.dataset} ({args.n} samples, seed {args.seed}) to {out} "
          f"in {time.time() - started:.1f} s")
    if args.consent_refusal_rate is not None:
        from simulations.synthetic.consent_manifest import write_consent_manifest

        path = write_consent_manifest(args.dataset, out, args.consent_refusal_rate, args.seed,
                                      task="fusion" if args.with_faces else None)
        print(f"Wrote {path}: consent manifest, refusal rate {args.consent_refusal_rate:g}")
    return 0


# --- shared by the commands above -----------------------------------------------------------------


def fail(message: str) -> int:
    """One line on stderr, exit code 2: an input the user can fix."""
    print(f"fedemo: error: {message}", file=sys.stderr)
    return 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a run config TOML from configs/ (omit for pyproject defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one run-config key, e.g. --set num-server-rounds=5 (repeatable)")


def _checked_overrides(args: argparse.Namespace) -> dict:
    """``--set`` as a dict, once it and CONFIG name only known keys (ConfigError, in our words, otherwise)."""
    from simulations.run_config import check_known_keys, parse_overrides

    overrides = parse_overrides(args.overrides)
    check_known_keys(args.config, overrides)
    return overrides


def _print_summary(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary.get("final", {})
    print(f"\nRun folder: {run_dir}")
    if "initial" in summary:
        print(f"Global accuracy {summary['initial'].get('accuracy', float('nan')):.3f} (initial) -> "
              f"{final.get('accuracy', float('nan')):.3f} after {summary.get('rounds')} rounds; "
              f"macro-F1 {final.get('macro_f1', float('nan')):.3f}; "
              f"{summary.get('wall_clock_s', summary.get('elapsed_s'))} s")
    else:
        print(f"Centralised accuracy {final.get('accuracy', float('nan')):.3f}, macro-F1 "
              f"{final.get('macro_f1', float('nan')):.3f} after {summary.get('epochs')} epochs; "
              f"{summary.get('elapsed_s')} s")
