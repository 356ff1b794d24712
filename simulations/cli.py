"""The ``fedemo`` command: one root that mounts each user's commands from where their code lives.

    fedemo simulate CONFIG [--set key=value ...]     federated simulation (Flower engine)
    fedemo baseline CONFIG [--set key=value ...]     centralised baseline on the same rows
    fedemo audit CONFIG [--set key=value ...]        research run with canaries: empirical lower bound on epsilon
    fedemo evaluate RUN_DIR [--out FILE]             a simulated run's exact accuracy on every node's test rows
    fedemo compare RUN_A RUN_B --out DIR             two runs side by side per group (or: CONFIG --a k=v --b k=v)
    fedemo plot RUN... [--out DIR]                   several runs or seeds overlaid: mean and 95% interval per round
    fedemo data synth DATASET --out DIR [--n N]      write a synthetic dataset in a published layout
    fedemo data check DATA_DIR --format FORMAT       a hospital's data folder, checked locally before joining
    fedemo ledger STATE_DIR [--json]                 a node's privacy budget: spent, remaining, per run (or every node's)
    fedemo node check --superlink HOST:PORT --root-certificates CA   can a hospital's node reach the coordinator?
    fedemo node sent STATE_DIR                       what a hospital's node sent, per round, in plain words
    fedemo node approve --node-config ... --run-config FILE [--yes]   what a run will spend; approve a first spend
    fedemo node dry-run --node-config ... --run-config FILE   the real ClientApp on synthetic data: spends nothing
    fedemo node withdraw --node-config ... RECORD...   a patient's withdrawn consent: left out from the next round
    fedemo credentials init OUT_DIR --hospital NAME ...   CA, SuperLink TLS certificate, hospital key pairs
    fedemo credentials add-hospital OUT_DIR NAME     one more hospital's key pair
    fedemo verify RUN_DIR [--public-key PEM] [--ledger ID=PATH]   signed report unaltered, ledgers on record?
    fedemo report RUN_DIR [--build]                  rebuild report.html from report.json
    fedemo predict RUN_DIR INPUT... [--format csv]   the run's model on images, clips, videos (one record each)
    fedemo export RUN_DIR --format onnx [--int8]     ONNX fp32/int8 files and a signed model_card.json

``fedemo --version`` prints FedEmo's version with Flower's, PyTorch's and Opacus's.

Each user's commands live with their code (``simulations.research_commands``, ``client.tools.commands``,
``server.tools.commands``); this root lives in ``simulations``, the one layer allowed to import all three.
Fixable errors are one line naming the file or key (exit 2); only the standard library loads at start-up.
"""

from __future__ import annotations

import argparse
import os
import sys

from client.inference.commands import add_predict_command
from client.tools.commands import add_node_commands
from server.tools.commands import add_coordinator_commands
from simulations.audit.command import add_audit_command
from simulations.export_command import add_export_command
from simulations.node_dry_run import add_dry_run_command
from simulations.research_commands import add_research_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedemo", description="Federated emotion recognition (Flower + Opacus)")
    parser.add_argument("--version", action=VersionAction, help="FedEmo's version and those of Flower, PyTorch, Opacus")
    commands = parser.add_subparsers(dest="command", required=True)
    data_commands = commands.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    add_research_commands(commands, data_commands)  # simulate (simulations/research_commands.py), baseline, ...
    add_audit_command(commands)  # fedemo audit: canaries and an empirical lower bound on epsilon (simulations/audit/)
    node_commands = add_node_commands(commands, data_commands)
    add_dry_run_command(node_commands)  # fedemo node dry-run: needs the synthetic data generator (simulations/)
    add_coordinator_commands(commands)
    add_predict_command(commands)  # fedemo predict (client/inference/commands.py)
    add_export_command(commands)  # fedemo export: ONNX, int8 and the signed model card (simulations/export_command.py)
    return parser


class VersionAction(argparse.Action):
    """``fedemo --version``: read from the installed packages' metadata, so nothing heavy is imported."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(versions())
        parser.exit()


def versions() -> str:
    """``fedemo 0.1.0 (flwr 1.41.0, torch 2.x, opacus 1.x, Python 3.x)``."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    others = ", ".join(f"{name} {installed(name)}" for name in ("flwr", "torch", "opacus"))
    return f"fedemo {installed('fedemo')} ({others}, Python {platform.python_version()})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handling (loading, data preparation): no traceback
        print("fedemo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fedemo node sent DIR | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if isinstance(err, user_errors()):
            print(f"fedemo: error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, RuntimeError):  # a simulation that stopped; the cause is chained below it
            cause = err.__cause__ or err
            print(f"fedemo: error: {err}" + (f"\n  cause: {cause}" if cause is not err else ""), file=sys.stderr)
            return 1
        raise


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a user can fix, answered in one line with exit code 2.

    Imported only once a command has failed: the partitioner's module brings
    numpy, which ``fedemo --help`` has no use for.
    """
    from client.data.partitioning import PartitionError
    from shared_models.config_error import ConfigError
    from shared_models.dataset_format_error import DatasetFormatError
    from shared_models.privacy_ledger import LedgerError

    return (ConfigError, DatasetFormatError, PartitionError, LedgerError, FileNotFoundError, FileExistsError)


if __name__ == "__main__":
    sys.exit(main())
