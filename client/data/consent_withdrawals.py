"""Withdrawn consent: an append-only file in the node's state folder, read before every message.

``fedemo node withdraw`` appends one JSON line per record to ``state-dir/consent_withdrawals.jsonl``
(the dataset it belongs to, the record id as the manifest names it, the date consent was withdrawn and
when the node recorded it). The node reads the file whenever it loads its rows for a message, so a
withdrawal recorded during a run takes effect from the next round on; nothing is ever removed from it
(a withdrawal cannot be undone by editing the manifest: a record named here stays out). A simulated
federation keeps the file in its state root (the run config's ``state-dir``), where it applies to the
shared dataset folder.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from client.data.consent import ConsentError

WITHDRAWALS_FILE = "consent_withdrawals.jsonl"


@dataclass(frozen=True)
class Withdrawal:
    dataset_id: str
    record: str
    withdrawn_on: str  # the date consent was withdrawn (YYYY-MM-DD), as the operator gave it
    recorded_at: str  # when the node recorded it (UTC, ISO 8601)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def read_withdrawals(state_dir: str | Path | None, dataset_id: str | None = None) -> dict[str, Withdrawal]:
    """The withdrawals recorded in ``state_dir`` (for ``dataset_id``, or all), by record id; the first of each."""
    if not state_dir:
        return {}
    path = Path(state_dir) / WITHDRAWALS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConsentError(path, f"cannot read the withdrawals: {err}") from None
    found: dict[str, Withdrawal] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            entry = Withdrawal(str(item["dataset_id"]), str(item["record"]), str(item["withdrawn_on"]),
                               str(item["recorded_at"]))
        except (ValueError, KeyError, TypeError):
            raise ConsentError(path, f"line {number}: not a withdrawal record (it was edited by hand?); restore "
                                     "it from a backup: a node never guesses which consent was withdrawn") from None
        if dataset_id is None or entry.dataset_id == dataset_id:
            found.setdefault(entry.record, entry)
    return found


def record_withdrawals(state_dir: str | Path, dataset_id: str, records: list[str],
                       withdrawn_on: str | None = None) -> list[Withdrawal]:
    """Append a withdrawal per record not withdrawn yet (under a lock, synced); returns the new ones."""
    if not dataset_id:
        raise ConsentError(state_dir, "a withdrawal needs the dataset id the node serves (its dataset-id)")
    when = withdrawn_on or datetime.date.today().isoformat()
    try:
        when = datetime.date.fromisoformat(when).isoformat()
    except ValueError:
        raise ConsentError(state_dir, f"withdrawal date {when!r} is not a date as YYYY-MM-DD") from None
    records = [r.strip() for r in records if r.strip()]
    if not records:
        raise ConsentError(state_dir, "no record ids to withdraw")
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WITHDRAWALS_FILE
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        already = read_withdrawals(folder, dataset_id)
        new = [Withdrawal(dataset_id, r, when, utc_now()) for r in dict.fromkeys(records) if r not in already]
        for entry in new:
            handle.write(json.dumps(entry.__dict__, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return new
