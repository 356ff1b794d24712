"""What leaves a hospital's node: every reply's structure, written to the node's own state folder.

The outermost ClientApp mod appends one JSON line per reply to ``<state-dir>/outgoing_messages.jsonl``:
message type, round, and each record's keys, shapes, dtypes and lengths, never values, so a privacy
officer (or a test) can check that only model arrays and fixed-size aggregates leave. On for deployed nodes
(a ``state-dir``) and for simulated ones with ``node-sent-log``; a failed write never fails the reply.
"""

from __future__ import annotations

import json
import time
from logging import WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.logger import log

from shared_models import messages as msgs
from shared_models.atomic_files import finite_or_null
from shared_models.privacy_ledger import simulated_state_dir

AUDIT_FILE = "outgoing_messages.jsonl"
NODE_SENT_LOG = "node-sent-log"  # run-config key (pyproject.toml): simulated nodes write the audit too


def describe_content(content: RecordDict) -> dict[str, dict]:
    """Record name -> {"type": ..., "items": {key: structure}}, with no values."""
    out: dict[str, dict] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            items = {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in record.items()}
        elif isinstance(record, MetricRecord):
            items = {k: ({"list": len(v)} if isinstance(v, list) else {"scalar": type(v).__name__})
                     for k, v in record.items()}
        elif isinstance(record, ConfigRecord):
            items = {k: {"type": type(v).__name__, "len": len(v) if isinstance(v, (str, bytes, list)) else None}
                     for k, v in record.items()}
        else:  # anything else would be a finding in itself
            items = {}
        out[name] = {"type": type(record).__name__, "items": items}
    return out


def audit_path(context: Context, config: ConfigRecord | None = None) -> Path | None:
    """A deployed node's ``state-dir``; a simulated node's state folder under ``node-sent-log``; else None."""
    state_dir = context.node_config.get("state-dir")
    if state_dir:
        return Path(str(state_dir)).expanduser() / AUDIT_FILE
    if not context.run_config.get(NODE_SENT_LOG) or "partition-id" not in context.node_config:
        return None
    # The simulated node's own state folder, as its ledger's (client_app.open_ledger): the run's state-dir, else
    # the run folder's node-state the coordinator names in every message.
    root = str(context.run_config.get("state-dir") or (config or ConfigRecord()).get(msgs.STATE_ROOT, ""))
    return simulated_state_dir(root, str(context.node_config["partition-id"])) / AUDIT_FILE if root else None


def outgoing_audit_mod(msg: Message, context: Context, call_next) -> Message:
    config = msg.content[msgs.CONFIG] if msgs.CONFIG in msg.content else ConfigRecord()
    path = audit_path(context, config)
    if path is None:
        return call_next(msg, context)
    entry = {"time": time.time(), "run": context.run_id, "message_type": msg.metadata.message_type,
             "round": config.get(msgs.SERVER_ROUND), "error": None, "records": {}}
    try:
        reply = call_next(msg, context)
    except Exception as err:  # Flower sends the exception's text as an error reply: record that too
        entry["error"] = f"{type(err).__name__}: {err}"
        _append(path, entry)
        raise
    if reply.has_error():
        entry["error"] = reply.error.reason
    else:
        entry["records"] = describe_content(reply.content)
    _append(path, entry)
    return reply


def _append(path: Path, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            payload, replaced = finite_or_null(entry)  # strict JSON: a NaN the node sent reads null, named
            if replaced:
                payload["non_finite"] = replaced
            f.write(json.dumps(payload, sort_keys=True, allow_nan=False) + "\n")
    except OSError as err:
        log(WARNING, "could not append to the outgoing-message audit %s: %s", path, err)
