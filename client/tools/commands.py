"""The hospital's ``fedemo`` commands: run on the node, read only local files, send nothing.

    fedemo data check DATA_DIR --format FORMAT [--task T] [--nodes N [--min-partition-size M]] [--json]
    fedemo ledger STATE_DIR [--json]      one node's ledger, or every node's under a folder (runs/<id>/node-state)
    fedemo node check --superlink HOST:PORT --root-certificates CA [--auth-supernode-private-key KEY]
                      [--registered [FILE]]
    fedemo node sent STATE_DIR [--last N] [--json]
    fedemo node approve --node-config "..." --run-config FILE [--yes] [--json]
    fedemo node withdraw (--node-config "..." | --state-dir DIR --dataset-id ID) RECORD... [--file F]

``simulations.cli`` mounts them beside the coordinator's and the researchers'
commands; their code sits here, next to the loaders and the ledger they read.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from client.tools.withdraw import add_withdraw_command

DATASET_FORMATS = ["fer2013", "rafdb", "cremad", "ravdess"]


def add_node_commands(commands: argparse._SubParsersAction,
                      data_commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """``ledger`` at the top level, ``check`` under ``fedemo data``, ``check``, ``sent`` and ``approve`` under
    ``fedemo node`` (returned: ``simulations.cli`` adds ``dry-run``, which needs the synthetic data generator)."""
    p = commands.add_parser("ledger", help="show a node's privacy ledger in plain words (spent, remaining, per run)")
    p.add_argument("state_dir", type=Path,
                   help="the node's state folder (or its privacy_ledger.json), or a folder of node state folders")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(func=ledger_command)

    p = data_commands.add_parser("check", help="check a hospital's data folder before joining (local; sends nothing)")
    p.add_argument("data_dir", type=Path, help="the dataset folder the node will name as data-path")
    p.add_argument("--format", required=True, choices=DATASET_FORMATS,
                   help="its published layout (the node's dataset-format)")
    p.add_argument("--task", choices=["face", "voice", "fusion"], default=None,
                   help="the federation's task (default: the format's own; cremad can serve fusion)")
    p.add_argument("--nodes", type=int, default=None, metavar="N",
                   help="also check that the folder splits into N simulated nodes (num-supernodes)")
    p.add_argument("--min-partition-size", type=int, default=None, metavar="M",
                   help="samples each node needs (the run config's min-partition-size; default 10)")
    p.add_argument("--partitioner", default="iid", choices=["iid", "dirichlet", "natural", "demographic"],
                   help="with --nodes: the run config's partitioner (default iid)")
    p.add_argument("--consent-default", default="exclude", choices=["exclude", "include"],
                   help="the node's policy for records consent.csv does not name (its node config's consent-default)")
    p.add_argument("--consent-manifest", type=Path, default=None,
                   help="the node config's consent-manifest, when the manifest is not DATA_DIR/consent.csv")
    p.add_argument("--consent-template", type=Path, default=None, metavar="FILE",
                   help="write FILE: every record id of the folder (FER2013: its row keys), consent to fill in")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=data_check_command)

    node = commands.add_parser("node", help="a deployed hospital node: reach the coordinator, read what it sent")
    node_commands = node.add_subparsers(dest="node_command", required=True)
    p = node_commands.add_parser("check", help="can this node reach the coordinator with its CA and key? "
                                 "(joins no run)")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT",
                   help="the SuperLink's address, as flower-supernode --superlink takes it")
    p.add_argument("--root-certificates", required=True, type=Path, metavar="CA",
                   help="the federation's ca.crt, as flower-supernode --root-certificates takes it")
    p.add_argument("--auth-supernode-private-key", type=Path, default=None, metavar="KEY",
                   help="the node's auth.key: checks that it loads and matches auth.pub beside it")
    p.add_argument("--registered", nargs="?", const="superlink", default=None, metavar="FILE",
                   help="is the key registered? Alone: ask the SuperLink (its Control API lists registered keys, "
                   "as `flwr supernode list`); with FILE: compare only with that local copy of the coordinator's "
                   "list (federation.json, or a file of auth.pub lines)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each network step")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=node_check_command)
    p = node_commands.add_parser("sent", help="what this node sent, per run and round, in plain words "
                                 "(from its outgoing-message audit and ledger)")
    p.add_argument("state_dir", type=Path, help="the node's state-dir (or its outgoing_messages.jsonl)")
    p.add_argument("--last", type=int, default=None, metavar="N", help="only the last N replies")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=node_sent_command)
    p = node_commands.add_parser("approve", help="show what a run will spend from this node's privacy budget and "
                                 "approve it (needed before a first spend under approve-first=true)")
    add_plan_arguments(p)
    p.add_argument("--yes", action="store_true", help="approve without asking")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (approves only with --yes)")
    p.set_defaults(func=node_approve_command)
    add_withdraw_command(node_commands)  # fedemo node withdraw (client/tools/withdraw.py)
    return node_commands


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """The node's own config and the federation's run config: what a spend plan is computed from."""
    p.add_argument("--node-config", required=True, metavar="'k=\"v\" ...'",
                   help="the node's --node-config, exactly as flower-supernode takes it (data-path, dataset-format, "
                   "dataset-id, state-dir)")
    p.add_argument("--run-config", required=True, type=Path, metavar="FILE",
                   help="the federation's run config (e.g. configs/deployment_dp.toml): rounds, fraction-train, "
                   "dp-epsilon")


def ledger_command(args: argparse.Namespace) -> int:
    from shared_models.privacy_ledger import LEDGER_FILE, NODE_FILE, PrivacyLedger

    target = Path(args.state_dir)
    if target.is_dir() and not (target / LEDGER_FILE).exists() and not (target / NODE_FILE).exists():
        return ledgers_command(target, as_json=args.json)  # not a node's own folder: the nodes under it
    ledger = PrivacyLedger.load(target / LEDGER_FILE if target.is_dir() else target)
    print(json.dumps(ledger.summary(), indent=2) if args.json else ledger.describe())
    return 0


def node_ledgers(folder: Path) -> list[Path]:
    """The ledgers of the node state folders under ``folder`` (its subfolders, or theirs: a run folder's node-state)."""
    from shared_models.privacy_ledger import LEDGER_FILE

    found = sorted(folder.glob(f"*/{LEDGER_FILE}")) or sorted(folder.glob(f"*/*/{LEDGER_FILE}"))
    return sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])


def ledgers_command(folder: Path, *, as_json: bool) -> int:
    """Every node's spend and remaining budget, one line each; 1 if any ledger cannot be read."""
    from shared_models.privacy_ledger import LEDGER_FILE, LedgerError, PrivacyLedger

    paths = node_ledgers(folder)
    if not paths:
        raise LedgerError(f"{folder}: no {LEDGER_FILE} here or in its subfolders; give a node's state folder "
                          "(its node config's state-dir) or a folder of them, such as runs/<run>/node-state")
    nodes: dict[str, dict] = {}
    lines = [f"Privacy ledgers of {len(paths)} nodes under {folder} (training epsilon, replace one record, spent of "
             "budget and remaining; evaluation-count epsilon, add or remove one test record):"]
    for path in paths:
        node = str(path.parent.relative_to(folder))
        try:
            s = PrivacyLedger.load(path).summary()
        except LedgerError as err:
            nodes[node] = {"error": str(err)}
            lines.append(f"  {node}: UNREADABLE: {err}")
            continue
        nodes[node] = s
        runs = "; ".join(f"run {name}: {r['rounds']} rounds" for name, r in s["runs"].items()) or "no training yet"
        lines.append(f"  {node}: training spent {s['spent']:.3f} of {s['budget']:g}, remaining {s['remaining']:.3f}; "
                     f"evaluation counts spent {s['eval_spent']:.3f} (delta {s['delta']:.2e}, "
                     f"{s['accountant'].upper()}); {runs}")
    readable = {n: s for n, s in nodes.items() if "error" not in s}
    if readable:
        most = max(readable, key=lambda n: readable[n]["spent"])
        lines.append(f"Largest spend: {most}, epsilon {readable[most]['spent']:.3f}; "
                     f"`fedemo ledger {folder / most}` shows its runs.")
    print(json.dumps({"folder": str(folder), "nodes": nodes}, indent=2) if as_json else "\n".join(lines))
    return 0 if len(readable) == len(nodes) else 1


def node_check_command(args: argparse.Namespace) -> int:
    """0: ready; 1: a step failed (each failure says what and how to fix it)."""
    from client.tools.node_check import check_node, describe

    result = check_node(args.superlink, args.root_certificates, args.auth_supernode_private_key, args.registered,
                        timeout=args.timeout)
    print(json.dumps(result.to_json(), indent=2) if args.json else describe(result))
    return 0 if result.ready else 1


def node_sent_command(args: argparse.Namespace) -> int:
    from client.tools import sent_log

    print(json.dumps(sent_log.to_json(args.state_dir), indent=2) if args.json
          else sent_log.describe(args.state_dir, last=args.last))
    return 0


def node_approve_command(args: argparse.Namespace) -> int:
    """0: approved (spend_approval.json written); 1: not approved (nothing written)."""
    import sys
    from dataclasses import asdict

    from client.tools.spend_plan import describe, parse_node_config, plan_spend, run_settings, write_approval

    node_config = parse_node_config(args.node_config)
    plan = plan_spend(run_settings(args.run_config), node_config)
    if args.json:
        print(json.dumps({**asdict(plan), "total": plan.total, "per_round": plan.per_round}, indent=2))
    else:
        print(describe(plan))
    if not args.yes:
        if args.json or not sys.stdin.isatty():
            print("Not approved: nothing written (no terminal to ask; add --yes to approve this plan)",
                  file=sys.stderr)
            return 1
        answer = input(f"Spend up to epsilon {plan.budget:g} of dataset {plan.dataset_id!r}'s budget, for good? "
                       "[y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Not approved: nothing written; the node refuses a first spend (approve-first=true)")
            return 1
    path = write_approval(plan)
    print(f"Approved: {path} (a node with approve-first=true now trains on dataset {plan.dataset_id!r} up to "
          f"epsilon {plan.budget:g})", file=sys.stderr if args.json else sys.stdout)
    return 0


def data_check_command(args: argparse.Namespace) -> int:
    from client.tools.data_check import check_data_dir, describe
    from client.data.partitioning import PartitionSpec

    spec = None  # a hospital's own folder: READY needs one train and one test sample
    if args.nodes is not None or args.min_partition_size is not None:  # a simulation's: every node's share
        size = {} if args.min_partition_size is None else {"min_size": args.min_partition_size}
        spec = PartitionSpec(method=args.partitioner, num_partitions=args.nodes or 1, **size)
    if args.consent_template is not None:
        from client.data.consent_check import write_template

        n = write_template(args.format, args.data_dir, args.consent_template, args.task)
        print(f"Wrote {args.consent_template}: {n} record ids; fill in consent (yes/no), form_version and date "
              f"(YYYY-MM-DD), then save it as {args.data_dir / 'consent.csv'}")
        return 0
    report = check_data_dir(args.data_dir, args.format, args.task, partition_spec=spec,
                            consent_default=args.consent_default, consent_manifest=args.consent_manifest)
    print(json.dumps(report.to_json(), indent=2) if args.json else describe(report))
    return 0 if report.ready else 2
