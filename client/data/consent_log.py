"""The node's consent log: which runs trained on which records, so a later withdrawal can be traced.

On the first training message of each Flower run the node appends one line to
``state-dir/consent_log.jsonl``: the run (named by its run folder, as the privacy ledger names it), when,
the manifest's hash, and a short digest of each training record's id (the ids themselves never leave the
state folder, and the digests only make the log smaller). A run whose line holds a record that has since
been withdrawn trained on it: every global model from that run on carries it, and the remedy is to retrain
from a checkpoint saved before that run (docs/data.md, "Consent"). What the node sends about this is a
count of such runs and whether the current run is one, never record ids or run names (``consent_wire``);
``fedemo node withdraw`` names the runs to the hospital.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from client.data.consent import ConsentError, record_ids
from client.data.consent_withdrawals import Withdrawal, read_withdrawals, utc_now
from shared_models import messages as msgs

LOG_FILE = "consent_log.jsonl"


def record_digest(record: str) -> str:
    """A record id's 64-bit digest (hex): enough to tell 100,000 records apart, short enough to log per run."""
    return hashlib.sha256(b"fedemo-consent\0" + record.encode("utf-8")).hexdigest()[:16]


def read_log(state_dir: str | Path | None) -> list[dict]:
    """The log's lines, oldest first ([] without a state folder or log)."""
    if not state_dir:
        return []
    path = Path(state_dir) / LOG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entry["run"], entry["flower_run"], entry["at"], set(entry["trained"])
        except (ValueError, KeyError, TypeError):
            raise ConsentError(path, f"line {number}: not a consent-log record; restore it from a backup") from None
        entries.append(entry)
    return entries


def log_training(samples, run_name: str, flower_run: str) -> bool:
    """Append this run's line (once per Flower run); False when the node keeps no state folder or it is there."""
    consent = samples.consent
    if consent is None or not consent.state_dir:
        return False
    folder = Path(consent.state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG_FILE, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if any(e["flower_run"] == flower_run for e in read_log(folder)):
            return False
        line = {"run": run_name, "flower_run": flower_run, "at": utc_now(), "dataset_id": samples.dataset_id,
                "manifest": consent.manifest_sha256,
                "trained": sorted(record_digest(r) for r in record_ids(samples.train.data))}
        handle.write(json.dumps(line, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return True


def runs_on_withdrawn(log: list[dict], withdrawals: dict[str, Withdrawal]) -> dict[str, int]:
    """Run name -> how many since-withdrawn records it trained on (runs that trained on none are left out)."""
    if not withdrawals:
        return {}
    withdrawn = {record_digest(r): w for r, w in withdrawals.items()}
    found: dict[str, set[str]] = {}
    for entry in log:
        hit = {d for d in entry["trained"] if d in withdrawn and entry["at"] < withdrawn[d].recorded_at}
        if hit:
            found.setdefault(entry["run"], set()).update(hit)
    return {run: len(hit) for run, hit in found.items()}


def withdrawals_since_last_run(log: list[dict], withdrawals: dict[str, Withdrawal], flower_run: str) -> int:
    """Withdrawals recorded after this node's previous run began (all of them before its first run)."""
    earlier = [e["at"] for e in log if e["flower_run"] != flower_run]
    since = max(earlier) if earlier else ""
    return sum(1 for w in withdrawals.values() if w.recorded_at > since)


def consent_wire(samples, run_name: str, flower_run: str) -> tuple[dict, dict]:
    """(metrics, client keys) a train reply carries about consent: counts and the manifest's hash.

    Without a manifest the hash is "" (the report then says no manifest was applied). Called after
    ``log_training``, so this run's own line is in the log.
    """
    consent = samples.consent
    if consent is None:
        return {}, {}
    withdrawals = read_withdrawals(consent.withdrawals_dir, consent.consent_dataset_id)
    log = read_log(consent.state_dir)
    tainted = runs_on_withdrawn(log, withdrawals)  # their names stay in the log: `fedemo node withdraw` lists them
    metrics = {msgs.CONSENT_USED: len(samples.train), msgs.CONSENT_EXCLUDED: consent.excluded,
               msgs.CONSENT_WITHDRAWN: consent.withdrawn,
               msgs.CONSENT_WITHDRAWN_NEW: withdrawals_since_last_run(log, withdrawals, flower_run),
               msgs.CONSENT_TRACKED: int(bool(consent.state_dir)), msgs.CONSENT_RUNS_ON_WITHDRAWN: len(tainted),
               msgs.CONSENT_THIS_RUN_ON_WITHDRAWN: int(run_name in tainted)}
    client = {msgs.CONSENT_MANIFEST: consent.manifest_sha256, msgs.CONSENT_POLICY: consent.policy}
    return metrics, client
