"""``fedemo node sent``: what a node sent, read from its outgoing-message audit in plain words.

The audit (``<state-dir>/outgoing_messages.jsonl``, client/tools/outgoing_audit.py)
holds one line per reply with its structure and no values. This module reads
it beside the node's privacy ledger in the same folder and says, per run and
round, what left the node: model weights (how many numbers), which metrics,
and for each whether it was noised and accounted in the ledger (the weights of
a DP-SGD round, the noised evaluation counts), is the ledger's own figure, is
treated as public, or was sent exact (no DP).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.tools.outgoing_audit import AUDIT_FILE
from shared_models import messages as msgs

# Metric keys in words, and how each is protected when it leaves the node
PUBLIC = {msgs.NUM_EXAMPLES: "the local set's size, public under the threat model",
          msgs.UPDATE_WEIGHT: "always 1",
          msgs.CONSENT_USED: "consented records trained on: the training-set size",
          msgs.CONSENT_EXCLUDED: "records consent left out, a count like the set's size",
          msgs.CONSENT_WITHDRAWN: "of those, withdrawn", msgs.CONSENT_WITHDRAWN_NEW: "withdrawals since the last run"}
ACCOUNTING = set(msgs.DP_REPORT_FIELDS) | {msgs.GROUP_DP_NOISE_MULTIPLIER, msgs.GROUP_DP_EPSILON_SPENT}
EXACT = {msgs.TRAIN_LOSS: "mean training loss", msgs.TRAIN_SAMPLES: "samples seen",
         msgs.SKIPPED: "unreadable rows skipped", msgs.LOSS_SUM: "test loss sum",
         msgs.VA_MOMENTS: "valence/arousal sums", msgs.MEL_SUM: "per-band audio sums",
         msgs.MEL_SUMSQ: "per-band audio sums of squares", msgs.FRAMES: "audio frame count"}


@dataclass
class Reply:
    run: str
    round: int | None
    kind: str
    time: float
    error: str | None
    records: dict
    lines: list[str] = field(default_factory=list)  # the plain-words description
    accounted: bool = False
    unprotected: list[str] = field(default_factory=list)  # data-dependent values sent without noise


def read_audit(state_dir: Path) -> list[dict]:
    path = state_dir / AUDIT_FILE if state_dir.is_dir() else state_dir
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no outgoing-message audit here. A deployed node writes one in the "
                                "state-dir of its --node-config once it has replied to the coordinator; a simulated node "
                                "in <run folder>/node-state/client-N when the run sets node-sent-log = true")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not a JSON line ({err.msg})") from err
    return entries


def describe_replies(state_dir: Path) -> tuple[list[Reply], dict]:
    """Each audited reply in words, and a summary; the ledger beside the audit says what was accounted."""
    from shared_models.privacy_ledger import LEDGER_FILE, LedgerError, PrivacyLedger

    state_dir = Path(state_dir)
    folder = state_dir if state_dir.is_dir() else state_dir.parent
    ledger = None
    if (folder / LEDGER_FILE).is_file():
        try:
            ledger = PrivacyLedger.load(folder / LEDGER_FILE)
        except LedgerError:
            ledger = None
    events = {}
    for e in ledger.events if ledger else []:
        events[(str(e.run), e.round, e.kind)] = e
    replies = []
    for entry in read_audit(state_dir):
        reply = Reply(run=str(entry.get("run")), round=entry.get("round"), kind=str(entry.get("message_type")),
                      time=float(entry.get("time") or 0), error=entry.get("error"), records=entry.get("records") or {})
        _describe(reply, events, ledger is not None)
        replies.append(reply)
    summary = {
        "replies": len(replies),
        "errors": sum(r.error is not None for r in replies),
        "train_replies": sum(r.kind == "train" and r.error is None for r in replies),
        "accounted": sum(r.accounted for r in replies),
        "with_unprotected_values": sum(bool(r.unprotected) for r in replies),
        "ledger": str(folder / LEDGER_FILE) if ledger else None,
        "run_names": dict(ledger.run_names) if ledger else {},
    }
    return replies, summary


def _describe(reply: Reply, events: dict, has_ledger: bool) -> None:
    if reply.error is not None:
        reply.lines.append(f"an error reply, no data: {reply.error}")
        return
    records = reply.records
    arrays = records.get(msgs.ARRAYS, {}).get("items", {})
    metrics = records.get(msgs.METRICS, {}).get("items", {})
    client = records.get(msgs.CLIENT, {}).get("items", {})
    train_event = events.get((reply.run, reply.round, "train"))
    count_event = events.get((reply.run, reply.round, "eval-counts"))
    if arrays:
        numbers = sum(math.prod(a.get("shape") or [1]) for a in arrays.values())
        dtypes = sorted({str(a.get("dtype")) for a in arrays.values()})
        text = f"model weights: {len(arrays)} arrays, {numbers:,} numbers ({', '.join(dtypes)})"
        if train_event is not None:
            reply.accounted = True
            text += (f"; noised and accounted: DP-SGD with noise multiplier {train_event.noise_multiplier:.3g}, "
                     f"{train_event.steps} steps at sample rate {train_event.sample_rate:.3g}, clipping norm "
                     f"{train_event.max_grad_norm:g}; epsilon {train_event.epsilon_after:.3f} after this round "
                     "(recorded in the ledger before sending)")
        else:
            reply.unprotected.append("model weights")
            text += ("; NOT noised: no DP-SGD event for this round in the ledger" if has_ledger
                     else "; NOT noised: no privacy ledger in this folder (dp = false)")
        reply.lines.append(text)
    noised_counts = msgs.GROUP_DP_NOISE_MULTIPLIER in metrics
    groups = sorted(k for k in metrics if msgs.is_group_key(k))
    public, accounting, exact, words = [], [], [], []
    for key in sorted(k for k in metrics if not msgs.is_group_key(k)):
        size = metrics[key].get("list")
        shape = f" ({size} numbers)" if size is not None else ""
        if key in PUBLIC:
            public.append(f"{key} ({PUBLIC[key]})")
        elif key in ACCOUNTING:
            accounting.append(key)
        elif key == msgs.CONFUSION and noised_counts:
            words.append(f"{key}{shape}: the sum of the noised group counts (post-processing, no extra cost)")
        elif key == msgs.CONFUSION:
            exact.append(f"{key}{shape} (test-set confusion counts)")
        else:
            exact.append(f"{key}{shape} ({EXACT.get(key, 'a value')})")
    if groups:
        if noised_counts and count_event is not None:
            words.append(f"{len(groups)} per-group count vectors: noised and accounted (Gaussian noise, noise "
                         f"multiplier {count_event.noise_multiplier:.3g}; epsilon {count_event.epsilon_after:.3f} "
                         "after them)")
            reply.accounted = True
        elif noised_counts:
            words.append(f"{len(groups)} per-group count vectors: noised, but no matching event in the ledger")
        else:
            exact.append(f"{len(groups)} per-group count vectors")
    if public:
        words.append("public: " + ", ".join(public))
    if accounting:
        words.append("DP accounting figures (the ledger's own): " + ", ".join(accounting))
    if exact:
        words.append("exact, NOT noised: " + ", ".join(exact))
        reply.unprotected.extend(exact)
    reply.lines.extend(f"metrics, {text}" for text in words)
    if client:
        reply.lines.append(f"identity: {', '.join(sorted(client))} (names, no data)")
    other = sorted(set(records) - {msgs.ARRAYS, msgs.METRICS, msgs.CLIENT})
    if other:
        reply.lines.append(f"other records: {', '.join(other)} (unexpected: check what produced them)")
        reply.unprotected.extend(other)


def describe(state_dir: Path, last: int | None = None) -> str:
    replies, summary = describe_replies(state_dir)
    names = summary["run_names"]
    shown = replies[-last:] if last else replies
    audit = Path(state_dir) / AUDIT_FILE if Path(state_dir).is_dir() else Path(state_dir)
    lines = [f"What this node sent: {len(replies)} replies in {audit} (the audit records structure, never values)"
             + (f"; the last {len(shown)}:" if len(shown) < len(replies) else ":")]
    current = None
    for reply in shown:
        if reply.run != current:
            current = reply.run
            name = names.get(reply.run)
            lines.append(f"Run {name} (Flower run {reply.run}):" if name else f"Run {reply.run}:")
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(reply.time)) if reply.time else "?"
        where = f"round {reply.round}" if reply.round is not None else "no round"
        lines.append(f"  {where}, {reply.kind} reply at {when}:")
        lines.extend(f"    {text}" for text in reply.lines)
    lines.append(f"In all: {summary['train_replies']} training replies, {summary['accounted']} replies noised and "
                 f"accounted in the ledger, {summary['with_unprotected_values']} with values sent exact, "
                 f"{summary['errors']} error replies.")
    if summary["ledger"] is None:
        lines.append("No privacy ledger in this folder: nothing this node sent was accounted (dp = false).")
    return "\n".join(lines)


def to_json(state_dir: Path) -> dict:
    replies, summary = describe_replies(state_dir)
    return {"summary": summary, "replies": [
        {"run": r.run, "run_name": summary["run_names"].get(r.run), "round": r.round, "kind": r.kind, "time": r.time,
         "error": r.error, "accounted": r.accounted, "unprotected": r.unprotected, "description": r.lines}
        for r in replies]}
