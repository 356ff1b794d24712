"""The ``fedemo`` command.

    fedemo simulate CONFIG [--set key=value ...]     federated simulation (Flower engine)
    fedemo baseline CONFIG [--set key=value ...]     centralised baseline on the same rows
    fedemo data synth DATASET --out DIR [--n N] [--seed S] [--with-faces]
    fedemo ledger STATE_DIR [--json]                 a node's privacy budget: spent, remaining, per run

Errors a user can fix (bad config, malformed data) are printed as one line
naming the file or key, with exit code 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from client.loaders.base import DatasetFormatError
from client.privacy_ledger import LedgerError
from shared_models.run_settings import ConfigError
from simulations.partitioners import PartitionError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a run config TOML from configs/ (omit for pyproject defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one run-config key, e.g. --set num-server-rounds=5 (repeatable)")


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


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.run_config import parse_overrides
    from simulations.simulate import run_simulation

    _print_summary(run_simulation(args.config, parse_overrides(args.overrides)))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from simulations.centralised import run_centralised
    from simulations.run_config import parse_overrides

    _print_summary(run_centralised(args.config, parse_overrides(args.overrides), epochs=args.epochs))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from simulations.synthetic_data import synthesize

    started = time.time()
    out = synthesize(args.dataset, args.out, args.n, args.seed, with_faces=args.with_faces)
    print(f"Wrote synthetic {args.dataset} ({args.n} samples, seed {args.seed}) to {out} "
          f"in {time.time() - started:.1f} s")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from client.privacy_ledger import LEDGER_FILE, PrivacyLedger

    path = args.state_dir / LEDGER_FILE if args.state_dir.is_dir() else args.state_dir
    ledger = PrivacyLedger.load(path)
    print(json.dumps(ledger.summary(), indent=2) if args.json else ledger.describe())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedemo", description="Federated emotion recognition (Flower + Opacus)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="run a federated simulation on Flower's simulation engine")
    _add_config_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("baseline", help="train the same model centrally on the pooled client data")
    _add_config_args(p)
    p.add_argument("--epochs", type=int, default=None, help="default: rounds x local epochs of the config")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("ledger", help="show a node's privacy ledger in plain words (spent, remaining, per run)")
    p.add_argument("state_dir", type=Path, help="the node's state folder (or its privacy_ledger.json)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=cmd_ledger)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic dataset in a published format")
    p.add_argument("dataset", choices=["fer2013", "rafdb", "cremad", "ravdess"])
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--n", type=int, default=3000, help="number of samples (faces or clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-faces", action="store_true", help="cremad: also write a face frame per clip (fusion)")
    p.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetFormatError, PartitionError, LedgerError, FileNotFoundError, FileExistsError) as err:
        print(f"fedemo: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a simulation that stopped; the cause is chained below it
        cause = err.__cause__ or err
        print(f"fedemo: error: {err}" + (f"\n  cause: {cause}" if cause is not err else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
