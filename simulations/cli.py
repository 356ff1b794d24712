"""The ``fedemo`` command.

    fedemo simulate CONFIG [--set key=value ...]     federated simulation (Flower engine)
    fedemo baseline CONFIG [--set key=value ...]     centralised baseline on the same rows
    fedemo data synth DATASET --out DIR [--n N] [--seed S] [--with-faces]
    fedemo data check DATA_DIR --format FORMAT       a hospital's data folder, checked locally before joining
    fedemo ledger STATE_DIR [--json]                 a node's privacy budget: spent, remaining, per run
    fedemo verify RUN_DIR [--public-key PEM]         a run's signed report: valid, or what does not match
    fedemo report RUN_DIR                            rebuild report.html from report.json
    fedemo compare RUN_A RUN_B --out DIR             two runs per demographic group (e.g. without/with DP)
    fedemo credentials init OUT --hospital NAME ...  CA, SuperLink TLS certificate, hospital key pairs
    fedemo verify RUN_DIR [--public-key PEM]         is the run's signed report.json unaltered?
    fedemo report RUN_DIR [--build]                  rebuild report.html from report.json
    fedemo compare RUN_A RUN_B --out DIR             two runs side by side per group (or: CONFIG --a k=v --b k=v)
    fedemo data check DATA_DIR --format FORMAT [--json]   a hospital's data folder, checked locally
    fedemo credentials init OUT_DIR --superlink-host H --hospital NAME ...   CA, TLS cert, node keys
    fedemo credentials add-hospital OUT_DIR NAME     one more hospital's key pair

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
from client.partitioning import PartitionError
from shared_models.privacy_ledger import LedgerError
from shared_models.run_settings import ConfigError


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
    from shared_models.privacy_ledger import LEDGER_FILE, PrivacyLedger

    path = args.state_dir / LEDGER_FILE if args.state_dir.is_dir() else args.state_dir
    ledger = PrivacyLedger.load(path)
    print(json.dumps(ledger.summary(), indent=2) if args.json else ledger.describe())
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from client.data_check import check_data_dir, describe

    report = check_data_dir(args.data_dir, args.format, args.task)
    print(json.dumps(report.to_json(), indent=2) if args.json else describe(report))
    return 0 if report.ready else 2


def cmd_credentials(args: argparse.Namespace) -> int:
    from server import federation_credentials as fc

    try:
        if args.credentials_command == "init":
            federation = fc.init_federation(args.out_dir, args.superlink_host, args.superlink_ip, args.hospital,
                                            server_days=args.days)
        else:
            fc.add_hospital(args.out_dir, args.name)
            federation = fc.load_federation(args.out_dir)
    except fc.CredentialsError as err:
        print(f"fedemo: error: {err}", file=sys.stderr)
        return 2
    print(fc.describe(args.out_dir, federation))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from simulations.report_commands import verify_command

    return verify_command(args)


def cmd_report(args: argparse.Namespace) -> int:
    from simulations.report_commands import report_command

    return report_command(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from simulations.report_commands import compare_command

    return compare_command(args)


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

    p = sub.add_parser("verify", help="check a run's signed report: valid, or exactly what does not match")
    p.add_argument("run_dir", type=Path, help="the run folder (holds report.json, report.sig, report.pub)")
    p.add_argument("--public-key", type=Path, default=None, help="the coordinator's trusted public key (PEM)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("report", help="rebuild a run's report.html from its report.json")
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--build", action="store_true", help="also build and sign report.json from the run's metrics")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("compare", help="two runs side by side per group (e.g. without and with DP)")
    p.add_argument("inputs", nargs="+", help="two run folders, or one run config (TOML) to run twice")
    p.add_argument("--out", required=True, type=Path, help="folder for comparison.json and comparison.html")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="CONFIG mode: override for both runs (repeatable)")
    p.add_argument("--a", action="append", default=[], metavar="KEY=VALUE", help="CONFIG mode: override for run A only (without --a/--b: A dp=false, B dp=true)")
    p.add_argument("--b", action="append", default=[], metavar="KEY=VALUE", help="CONFIG mode: override for run B only")
    p.set_defaults(func=cmd_compare)

    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write a synthetic dataset in a published format")
    p.add_argument("dataset", choices=["fer2013", "rafdb", "cremad", "ravdess"])
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--n", type=int, default=3000, help="number of samples (faces or clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-faces", action="store_true", help="cremad: also write a face frame per clip (fusion)")
    p.set_defaults(func=cmd_synth)
    p = data.add_parser("check", help="check a hospital's data folder before joining (local; sends nothing)")
    p.add_argument("data_dir", type=Path, help="the dataset folder the node will name as data-path")
    p.add_argument("--format", required=True, choices=["fer2013", "rafdb", "cremad", "ravdess"],
                   help="its published layout (the node's dataset-format)")
    p.add_argument("--task", choices=["face", "voice", "fusion"], default=None,
                   help="the federation's task (default: the format's own; cremad can serve fusion)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_data_check)

    creds = sub.add_parser("credentials", help="TLS and SuperNode-authentication files for a deployed federation")
    creds_sub = creds.add_subparsers(dest="credentials_command", required=True)
    p = creds_sub.add_parser("init", help="create a CA, the SuperLink's TLS certificate and hospital key pairs")
    p.add_argument("out_dir", type=Path, help="a new folder for the credentials")
    p.add_argument("--superlink-host", action="append", default=[], metavar="NAME",
                   help="a DNS name nodes use to reach the SuperLink (repeatable; a SAN of its certificate)")
    p.add_argument("--superlink-ip", action="append", default=[], metavar="IP",
                   help="an IP address nodes use to reach the SuperLink (repeatable; a SAN of its certificate)")
    p.add_argument("--hospital", action="append", default=[], metavar="NAME", help="a hospital (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity of the SuperLink certificate")
    p.set_defaults(func=cmd_credentials)
    p = creds_sub.add_parser("add-hospital", help="a key pair for one more hospital")
    p.add_argument("out_dir", type=Path, help="the folder `credentials init` wrote")
    p.add_argument("name")
    p.set_defaults(func=cmd_credentials)
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
