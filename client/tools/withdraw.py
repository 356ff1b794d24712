"""``fedemo node withdraw``: record that patients withdrew consent, in the node's state folder.

    fedemo node withdraw --node-config "..." RECORD...          a hospital: its state-dir, dataset-id, data-path
    fedemo node withdraw --state-dir DIR --dataset-id ID RECORD... [--file IDS.txt] [--date YYYY-MM-DD]

Each record (named as the consent manifest names it) is appended to
``state-dir/consent_withdrawals.jsonl`` with the date; from the node's next round on it is excluded from
training and evaluation, and the node's consent log says which earlier runs trained on it (the report of
the next run shows them). When the data folder is known (``--node-config``, or ``--data-path`` with
``--format``) every id is checked against it first: a misspelt id is refused and nothing is recorded.
A simulated federation keeps its withdrawals in the run config's ``state-dir``; its dataset id is the
folder's default, ``FORMAT:/absolute/data/path`` (``--data-path`` and ``--format`` give it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_withdraw_command(node_commands: argparse._SubParsersAction) -> None:
    p = node_commands.add_parser("withdraw", help="record patients' withdrawn consent: the node leaves those records "
                                 "out from its next round on")
    p.add_argument("records", nargs="*", help="record ids as the consent manifest names them")
    p.add_argument("--file", type=Path, default=None, help="a file of record ids, one a line")
    p.add_argument("--node-config", default=None, metavar="'k=\"v\" ...'",
                   help="the node's --node-config (state-dir, dataset-id, data-path, dataset-format)")
    p.add_argument("--state-dir", type=Path, default=None, help="the node's state folder (a simulation's state-dir)")
    p.add_argument("--dataset-id", default=None, help="the node's dataset-id (default: FORMAT:/absolute/data-path)")
    p.add_argument("--data-path", type=Path, default=None, help="the data folder: ids are checked against it")
    p.add_argument("--format", default=None, choices=["fer2013", "rafdb", "cremad", "ravdess"],
                   help="the folder's dataset-format")
    p.add_argument("--date", default=None, help="the date consent was withdrawn (YYYY-MM-DD; default today)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=withdraw_command)


def withdraw_command(args: argparse.Namespace) -> int:
    """0: recorded (or already recorded); 2: refused (unknown ids, no state folder): nothing written."""
    from client.data.consent import ConsentError
    from client.data.consent_withdrawals import WITHDRAWALS_FILE, record_withdrawals

    node = {}
    if args.node_config:
        from client.tools.spend_plan import parse_node_config

        node = parse_node_config(args.node_config)
    state_dir = args.state_dir or (Path(str(node["state-dir"])).expanduser() if node.get("state-dir") else None)
    data_path = args.data_path or (Path(str(node["data-path"])) if node.get("data-path") else None)
    dataset = args.format or (str(node["dataset-format"]) if node.get("dataset-format") else None)
    dataset_id = args.dataset_id or node.get("dataset-id")
    if not dataset_id and data_path and dataset:
        dataset_id = f"{dataset}:{data_path.resolve()}"
    if state_dir is None:
        raise ConsentError("fedemo node withdraw", "no state folder: give --state-dir or a --node-config with "
                                                   "state-dir (the node keeps its withdrawals there)")
    if not dataset_id:
        raise ConsentError("fedemo node withdraw", "no dataset id: give --dataset-id (the node config's "
                                                   "dataset-id), or --data-path and --format for the default")
    records = list(args.records)
    if args.file is not None:
        try:
            records += [line.strip() for line in args.file.read_text(encoding="utf-8-sig").splitlines()]
        except OSError as err:
            raise ConsentError(args.file, f"cannot read the file of record ids: {err.strerror or err}") from None
    if data_path is not None and dataset is not None:
        unknown = unknown_records(dataset, data_path, records)
        if unknown:
            raise ConsentError(data_path, f"{len(unknown)} record id(s) match no record in the folder (nothing "
                                          f"recorded): {', '.join(unknown[:5])}")
    new = record_withdrawals(state_dir, str(dataset_id), records, args.date)
    result = {"state_dir": str(state_dir), "dataset_id": str(dataset_id), "recorded": [w.record for w in new],
              "already": sorted(set(r.strip() for r in records if r.strip()) - {w.record for w in new}),
              "runs_on_withdrawn": runs_trained_on(state_dir, str(dataset_id))}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"Recorded {len(new)} withdrawal(s) for dataset {dataset_id!r} in {state_dir / WITHDRAWALS_FILE}"
              + (f" ({len(result['already'])} already withdrawn)" if result["already"] else "")
              + ": the node leaves them out from its next round on")
        if result["runs_on_withdrawn"]:
            runs = ", ".join(f"{run} ({n} records)" for run, n in result["runs_on_withdrawn"].items())
            print(f"Runs that trained on records withdrawn so far (retrain from a checkpoint before the first, "
                  f"docs/data.md): {runs}")
    return 0


def runs_trained_on(state_dir: Path, dataset_id: str) -> dict[str, int]:
    """Run name -> withdrawn records it trained on, from the consent logs in ``state_dir`` (or its client-*)."""
    from client.data.consent_log import read_log, runs_on_withdrawn
    from client.data.consent_withdrawals import read_withdrawals

    withdrawals = read_withdrawals(state_dir, dataset_id)
    found: dict[str, int] = {}
    for folder in [Path(state_dir), *sorted(Path(state_dir).glob("client-*"))]:
        for run, n in runs_on_withdrawn(read_log(folder), withdrawals).items():
            found[run] = found.get(run, 0) + n
    return found


def unknown_records(dataset: str, data_path: Path, records: list[str]) -> list[str]:
    """The ids among ``records`` that name no record the loader reads in ``data_path`` (before any manifest)."""
    from client.data.consent import record_ids
    from client.data.loaders.registry import every_record

    held = set(record_ids(every_record(dataset, data_path)))
    return [r for r in dict.fromkeys(r.strip() for r in records) if r and r not in held]
