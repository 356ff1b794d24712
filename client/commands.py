"""The hospital's ``fedemo`` commands: run on the node, read only local files, send nothing.

    fedemo data check DATA_DIR --format FORMAT [--task T] [--json]
    fedemo ledger STATE_DIR [--json]

``simulations.cli`` mounts them beside the coordinator's and the researchers'
commands; their code sits here, next to the loaders and the ledger they read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATASET_FORMATS = ["fer2013", "rafdb", "cremad", "ravdess"]


def add_node_commands(commands: argparse._SubParsersAction, data_commands: argparse._SubParsersAction) -> None:
    """``ledger`` at the top level, ``check`` under ``fedemo data``."""
    p = commands.add_parser("ledger", help="show a node's privacy ledger in plain words (spent, remaining, per run)")
    p.add_argument("state_dir", type=Path, help="the node's state folder (or its privacy_ledger.json)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=ledger_command)

    p = data_commands.add_parser("check", help="check a hospital's data folder before joining (local; sends nothing)")
    p.add_argument("data_dir", type=Path, help="the dataset folder the node will name as data-path")
    p.add_argument("--format", required=True, choices=DATASET_FORMATS,
                   help="its published layout (the node's dataset-format)")
    p.add_argument("--task", choices=["face", "voice", "fusion"], default=None,
                   help="the federation's task (default: the format's own; cremad can serve fusion)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=data_check_command)


def ledger_command(args: argparse.Namespace) -> int:
    from shared_models.privacy_ledger import LEDGER_FILE, PrivacyLedger

    path = args.state_dir / LEDGER_FILE if args.state_dir.is_dir() else args.state_dir
    ledger = PrivacyLedger.load(path)
    print(json.dumps(ledger.summary(), indent=2) if args.json else ledger.describe())
    return 0


def data_check_command(args: argparse.Namespace) -> int:
    from client.data_check import check_data_dir, describe

    report = check_data_dir(args.data_dir, args.format, args.task)
    print(json.dumps(report.to_json(), indent=2) if args.json else describe(report))
    return 0 if report.ready else 2
