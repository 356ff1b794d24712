"""``model_card.json``: what an exported model is, how it was trained and what int8 costs, signed.

The run (datasets, hospitals, rounds, epsilon per hospital, from the signed report), the exported files'
SHA-256 and sizes, fp32 vs int8 accuracy overall and per group (groups losing > 2 points flagged), latency
and throughput, and the calibration set. Signed by the key that signed report.json over the card's and the
report's SHA-256, and checked by ``fedemo verify``. Details: docs/design_notes.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from server.report.model_card_page import CARD_PAGE_FILE, render_card_page
from server.report.signing import REPORT_FILE, SIGNATURE_FILE, canonical_bytes, key_id

CARD_FILE = "model_card.json"
CARD_SIG_FILE = "model_card.sig"
CARD_STATEMENT_KIND = "fedemo-model-card"


def training_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Datasets, hospitals, rounds and epsilon per hospital, as the signed report states them."""
    run = report.get("run") or {}
    privacy = report.get("privacy") or {}
    epsilons = {}
    for client in privacy.get("clients") or []:
        if isinstance(client, dict) and "client_id" in client:
            eps = next((client[k] for k in ("epsilon", "spent_epsilon", "max_epsilon") if k in client), None)
            epsilons[str(client["client_id"])] = eps
    hospitals = [str(c.get("client_id")) for c in (report.get("hospitals") or {}).get("clients") or []]
    return {"run_id": run.get("run_id"), "dataset": run.get("dataset"), "task": run.get("task"),
            "model": run.get("model"), "mode": run.get("mode"), "hospitals": hospitals,
            "num_hospitals": run.get("num_clients"), "rounds": run.get("rounds_completed"),
            "sample_level_dp": bool((privacy.get("sample_level_dp") or {}).get("enabled")) if isinstance(
                privacy.get("sample_level_dp"), dict) else None,
            "max_epsilon": privacy.get("max_epsilon"), "epsilon_per_hospital": epsilons or None,
            "final_accuracy_reported": (report.get("final") or {}).get("accuracy")}


def build_card(run_dir: Path, export: dict[str, Any]) -> dict[str, Any]:
    run_dir = Path(run_dir)
    report_bytes = (run_dir / REPORT_FILE).read_bytes()
    report = json.loads(report_bytes.decode("utf-8"))
    files = {}
    for form, path in export["files"].items():
        data = Path(path).read_bytes()
        files[form] = {"file": Path(path).name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"kind": "fedemo-model-card", "schema_version": 1, "report_sha256": hashlib.sha256(report_bytes).hexdigest(),
            "training": training_summary(report), "export": {k: v for k, v in export.items() if k != "files"},
            "files": files, "measured_on": {"machine": platform.machine(), "processor": platform.processor(),
                                            "python": platform.python_version(), "threads": 1}}


def card_statement(card_bytes: bytes, report_sha256: str) -> bytes:
    return canonical_bytes({"kind": CARD_STATEMENT_KIND, "card_sha256": hashlib.sha256(card_bytes).hexdigest(),
                            "report_sha256": report_sha256})


def write_card(run_dir: Path, card: dict[str, Any], key) -> Path:
    """Write model_card.json (canonical) and, with the run's key, model_card.sig; returns the card path."""
    from shared_models.atomic_files import atomic_write_bytes, atomic_write_json

    run_dir = Path(run_dir)
    data = canonical_bytes(card)
    atomic_write_bytes(run_dir / CARD_FILE, data)
    atomic_write_bytes(run_dir / CARD_PAGE_FILE, render_card_page(json.loads(data)))  # as verify reads the card
    if key is not None:
        public = key.public_key()
        atomic_write_json(run_dir / CARD_SIG_FILE, {
            "algorithm": "Ed25519", "key_id": key_id(public), "report_sha256": card["report_sha256"],
            "signature": base64.b64encode(key.sign(card_statement(data, card["report_sha256"]))).decode("ascii")})
    return run_dir / CARD_FILE


def check_card(run_dir: Path, verification) -> None:
    """Add the card's problems to ``signing.verify_run``'s verdict (invalid when the card is not as signed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        sig = json.loads((Path(run_dir) / SIGNATURE_FILE).read_text(encoding="utf-8"))
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig["public_key"], validate=True))
    except (OSError, ValueError, KeyError, TypeError):
        return  # report.sig itself is broken: verify_run already says so
    problems = card_problems(run_dir, public)
    if problems:
        verification.valid = False
        verification.problems.extend(problems)
        verification.changed_files.extend(name for name in (CARD_FILE, CARD_PAGE_FILE)
                                          if any(p.startswith(f"{name} CHANGED") for p in problems))


def card_problems(run_dir: Path, public) -> list[str]:
    """Why model_card.json is not the card signed with this run's report key (empty when it is, or absent)."""
    from cryptography.exceptions import InvalidSignature

    run_dir = Path(run_dir)
    card_path, sig_path = run_dir / CARD_FILE, run_dir / CARD_SIG_FILE
    if not card_path.is_file():
        return [f"{sig_path} present but {card_path} is missing"] if sig_path.is_file() else []
    if not sig_path.is_file():
        return [f"{card_path} is UNSIGNED: no {CARD_SIG_FILE} (exported without the coordinator's key)"]
    data = card_path.read_bytes()
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        signature = base64.b64decode(sig["signature"], validate=True)
        report_sha256 = str(sig["report_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{sig_path} is unreadable or malformed: {err}"]
    problems = []
    if sig.get("key_id") != key_id(public):
        problems.append(f"{sig_path}: signed by key {sig.get('key_id')}, not the report's key {key_id(public)}")
    try:
        public.verify(signature, card_statement(data, report_sha256))
    except InvalidSignature:
        problems.append(f"model_card.json CHANGED: {card_path} is not the card signed with this run's key")
    page = run_dir / CARD_PAGE_FILE
    try:
        expected_page = render_card_page(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, AttributeError):  # a card that is not JSON: reported above
        expected_page = None
    card_signed = not any(p.startswith(f"{CARD_FILE} CHANGED") for p in problems)  # a page is judged by a signed card
    if card_signed and page.is_file() and page.read_bytes() != expected_page:
        problems.append(f"{CARD_PAGE_FILE} CHANGED: {page} is not the page of the signed model_card.json "
                        "(`fedemo export` writes it again)")
    current = hashlib.sha256((run_dir / REPORT_FILE).read_bytes()).hexdigest()
    if report_sha256 != current:
        problems.append(f"model_card.json was signed for another report.json (sha256 {report_sha256}, the file is "
                        f"{current})")
    return problems
