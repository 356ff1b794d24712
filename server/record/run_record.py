"""The run folder: what a run leaves behind for people and machines.

``runs/<run-id>/`` holds ``config.json`` (the resolved run config and the
software versions), ``metrics.jsonl`` (one JSON object per round, appended and
flushed as the round ends, so a crashed run still documents its past rounds),
``global_model.pt`` (the final global weights) and ``summary.json``.
"""

from __future__ import annotations

import io
import json
import os
import re
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from flwr.app import Message

from server.rounds.global_metrics import ccc_from_moments, classification_metrics, group_summary, sum_counts
from shared_models import messages as msgs
from shared_models.atomic_files import atomic_write_bytes, atomic_write_json, atomic_write_text, finite_or_null, strict_json
from shared_models.taxonomy import EMOTIONS, NUM_EMOTIONS


def new_run_id(name: str = "") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return name or f"{stamp}-{os.getpid()}"


def software_versions() -> dict[str, str]:
    import flwr
    import opacus

    return {"python": platform.python_version(), "torch": torch.__version__, "flwr": flwr.__version__,
            "opacus": opacus.__version__, "numpy": np.__version__}


def _client_id(reply: Message) -> str:
    content = reply.content
    if msgs.CLIENT in content:
        return str(content[msgs.CLIENT].get(msgs.CLIENT_ID, reply.metadata.src_node_id))
    return str(reply.metadata.src_node_id)


def _by_client(entry: dict[str, Any]) -> tuple[int, str]:
    """Natural order of client ids: "2" before "10"."""
    return len(entry["client"]), entry["client"]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_reason(text: str) -> str:
    """A node's error in one line: the ClientApp's own message, without Ray's traceback and colour codes.

    In simulation Flower wraps a node's exception in Ray's task error, whose
    text is a traceback ending in "Exception ClientAppException occurred.
    Message: <the node's message>"; deployed nodes send the message alone.
    """
    text = _ANSI.sub("", text or "").strip()
    marker = "occurred. Message: "
    if marker in text:
        return text.rsplit(marker, 1)[1].strip().rstrip("'>").strip()
    return text


def _failures(replies: list[Message]) -> list[dict[str, Any]]:
    return [{"node_id": r.metadata.src_node_id, "reason": failure_reason(r.error.reason)}
            for r in replies if r.has_error()]


def evaluation_summary(replies: list[Message]) -> dict[str, Any]:
    """Global metrics from the summed counts of all evaluation replies, plus per-client counts."""
    ok = [r for r in replies if not r.has_error()]
    confusion, loss_sum, n, va = sum_counts(r.content[msgs.METRICS] for r in ok)
    clients = []
    for r in ok:
        m = r.content[msgs.METRICS]
        c = np.asarray(m[msgs.CONFUSION], dtype=np.int64)
        # noised counts (unclipped: a cell, even the total, may be negative): the rate is clipped for display only
        accuracy = float(np.clip(np.trace(c.reshape(NUM_EMOTIONS, NUM_EMOTIONS)) / c.sum(), 0.0, 1.0)) \
            if c.sum() > 0 else None
        entry = {"client": _client_id(r), "num_examples": int(m[msgs.NUM_EXAMPLES]), "accuracy": accuracy,
                 "skipped": int(m.get(msgs.SKIPPED, 0))}
        client = r.content[msgs.CLIENT] if msgs.CLIENT in r.content else {}
        if msgs.DP_LEDGER_HEAD in client:  # the ledger head after a noised release: checked like a training one
            entry["ledger_head"] = str(client[msgs.DP_LEDGER_HEAD])
        clients.append(entry)
    out: dict[str, Any] = {"loss": loss_sum / n if n and np.isfinite(loss_sum) else None, "eval_examples": n}
    out.update({k.replace("-", "_"): v for k, v in classification_metrics(confusion).items()})
    if va is not None and n:
        out["ccc_valence"], out["ccc_arousal"] = ccc_from_moments(va, n)
    out["confusion"] = {"labels": list(EMOTIONS), "counts": confusion.tolist()}
    out.update(group_summary([(_client_id(r), r.content[msgs.METRICS]) for r in ok]))  # "groups" (+ "groups_dp")
    out["evaluate"] = {"clients": sorted(clients, key=_by_client), "failures": _failures(replies)}
    return out


def training_summary(replies: list[Message]) -> dict[str, Any]:
    clients = []
    for r in replies:
        if r.has_error():
            continue
        m = r.content[msgs.METRICS]
        entry = {"client": _client_id(r), "num_examples": int(m[msgs.NUM_EXAMPLES])}
        if msgs.TRAIN_LOSS in m:  # a DP node keeps its loss (not accounted)
            entry["train_loss"] = float(m[msgs.TRAIN_LOSS])
        if msgs.SKIPPED in m:
            entry["skipped"] = int(m[msgs.SKIPPED])
        consent = msgs.consent_report(m, r.content[msgs.CLIENT] if msgs.CLIENT in r.content else {})
        if consent:  # counts and the manifest's hash (server/report/consent_section.py)
            entry["consent"] = consent
        dp = msgs.dp_report(m)
        if dp:  # what the node spent this round, as its ledger computed it
            client = r.content[msgs.CLIENT] if msgs.CLIENT in r.content else {}
            dp["accountant"] = str(client.get(msgs.DP_ACCOUNTANT, ""))
            # The node's hash-chained ledger head after this round's spend: the report's ledger check (and
            # `fedemo verify --ledger`) later requires the node's ledger chain to still contain it.
            if msgs.DP_LEDGER_HEAD in client:
                dp["ledger_head"] = str(client[msgs.DP_LEDGER_HEAD])
            entry["dp"] = dp
        clients.append(entry)
    return {"clients": sorted(clients, key=_by_client), "failures": _failures(replies)}


NON_FINITE_KEY = "non_finite"  # {place: "NaN" | "Infinity" | "-Infinity"}: why a figure reads null


def finite_json(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with each NaN/infinite figure as null, and ``non_finite`` saying which were and what they were.

    A diverged round's loss is NaN; Python's json would write ``NaN``, which no strict JSON reader (jq,
    JavaScript, most languages' parsers) accepts, so one bad figure would make the whole record unreadable.
    """
    clean, replaced = finite_or_null(payload)
    if replaced:
        clean[NON_FINITE_KEY] = {**clean.get(NON_FINITE_KEY, {}), **replaced}
    return clean


def json_line(entry: dict[str, Any]) -> str:
    """One metrics.jsonl line: strict JSON (non-finite figures as null, named under ``non_finite``)."""
    return strict_json(finite_json(entry), sort_keys=True) + "\n"


def run_is_finished(run_dir: Path, checkpoint_round: int) -> bool:
    """Whether the run in ``run_dir`` ended after ``checkpoint_round`` with its summary and signed report.

    A coordinator killed after its last checkpoint but before (or while) writing them leaves a run that
    trained every round and says nothing: ``--resume`` finishes it (server/server_app.py ``finish``).
    """
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    complete = summary.get("complete", "interrupted" not in summary)  # older runs' summaries lack "complete"
    return (bool(complete) and summary.get("rounds") == checkpoint_round
            and all((Path(run_dir) / name).is_file() for name in ("report.json", "report.sig")))


@dataclass
class RunRecord:
    run_dir: Path
    started: float = field(default_factory=time.time)

    @classmethod
    def create(cls, runs_dir: Path, run_id: str, config: dict[str, Any], extra: dict[str, Any]) -> "RunRecord":
        run_dir = Path(runs_dir) / run_id
        if (run_dir / "metrics.jsonl").exists():
            raise FileExistsError(f"{run_dir} already holds a run; choose another run-name")
        run_dir.mkdir(parents=True, exist_ok=True)
        record = cls(run_dir)
        record.write_json("config.json", {"run_id": run_id, "run_config": config,
                                          "versions": software_versions(), **extra})
        return record

    @classmethod
    def reopen(cls, run_dir: Path) -> "RunRecord":
        """An existing run folder, to be continued (resume); its clock restarts."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a FedEmo run folder (no config.json)")
        return cls(run_dir)

    def run_config(self) -> dict[str, Any]:
        """The run config as config.json holds it (a resumed part's allowed changes included)."""
        return json.loads((self.run_dir / "config.json").read_text(encoding="utf-8"))["run_config"]

    def add_flower_run(self, flower_run_id: int, changes: dict[str, list[Any]] | None = None) -> None:
        """Record a resumed part in config.json: its Flower run id (``resumed_flower_run_ids``), when it
        started and what it changed (``resumed_parts``: only keys a resume may change), and those changes
        in ``run_config`` itself, so the report states the config the run ends under.

        Nodes record their privacy spend under Flower's run id, which is new
        after a resume; the report's ledger check reads every part's.
        """
        config = json.loads((self.run_dir / "config.json").read_text(encoding="utf-8"))
        changes = {k: v for k, v in (changes or {}).items() if k not in ("resume", "runs-dir", "run-name")}
        config["resumed_flower_run_ids"] = [*config.get("resumed_flower_run_ids", []), flower_run_id]
        config["resumed_parts"] = [*config.get("resumed_parts", []), {
            "flower_run_id": flower_run_id, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "changed": changes}]
        config["run_config"].update({key: new for key, (_, new) in changes.items()})
        self.write_json("config.json", config)

    def write_json(self, name: str, payload: dict[str, Any]) -> Path:
        path = self.run_dir / name
        atomic_write_json(path, finite_json(payload))
        return path

    def rewrite_rounds(self, entries: list[dict[str, Any]]) -> None:
        """metrics.jsonl as exactly these rounds (a resumed run drops lines its checkpoint does not cover)."""
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json_line(e) for e in entries))

    def log_round(self, entry: dict[str, Any]) -> None:
        entry = {"elapsed_s": round(time.time() - self.started, 2), **entry}
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json_line(entry))
            fh.flush()
            os.fsync(fh.fileno())

    def save_weights(self, state_dict: dict[str, torch.Tensor]) -> Path:
        """global_model.pt, atomically: a full disk is an OSError (ENOSPC) and leaves no half-written file."""
        path = self.run_dir / "global_model.pt"
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def rounds(self) -> Iterable[dict[str, Any]]:
        with open(self.run_dir / "metrics.jsonl", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
