"""Signing and verifying a run's report.json with the coordinator's Ed25519 key.

The signature covers the exact bytes of report.json, written in canonical form (sorted keys, no spaces,
UTF-8), so any changed byte is caught; report.sig also carries per-section digests so a failed check says
which part changed. The page (report.html) is bound too: the coordinator signs its digest (``sign_page``),
and an unsigned page must equal the page this software renders. The private key lives outside run folders,
created once with 0600 and never overwritten. Files and formats: docs/report.md, docs/design_notes.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared_models.atomic_files import atomic_create_bytes, atomic_write_bytes, atomic_write_json

REPORT_FILE = "report.json"
SIGNATURE_FILE = "report.sig"
PUBLIC_KEY_FILE = "report.pub"
ALGORITHM = "Ed25519"
SIGNATURE_FORMAT = 1
HTML_FILE = "report.html"
PAGE_STATEMENT_KIND = "fedemo-report-page"  # what a page signature signs: never valid as a report.json
KEY_ENV = "FEDEMO_SIGNING_KEY"
DEFAULT_KEY = Path("~/.config/fedemo/coordinator_ed25519.pem")


class SigningError(RuntimeError):
    """The signing key cannot be used (unreadable, wrong type, inside a run folder)."""


def canonical_bytes(report: dict[str, Any]) -> bytes:
    """The one byte form of a report: sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    return json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def default_key_path(configured: str = "") -> Path:
    """The run-config ``signing-key``, else ``$FEDEMO_SIGNING_KEY``, else ``~/.config/fedemo/...``."""
    raw = configured or os.environ.get(KEY_ENV, "") or str(DEFAULT_KEY)
    return Path(raw).expanduser().resolve()


def load_or_create_key(path: Path, *, forbidden_root: Path | None = None) -> Ed25519PrivateKey:
    """The coordinator's private key; created (0600, exclusive create) only when the file does not exist.

    ``forbidden_root`` (the runs folder) must not contain the key: a key stored
    next to the report it signs protects nothing.
    """
    path = Path(path)
    if forbidden_root is not None and path.resolve().is_relative_to(Path(forbidden_root).resolve()):
        raise SigningError(f"signing key {path} lies inside the runs folder {forbidden_root}; "
                           "keep it outside run folders (run-config signing-key)")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            atomic_create_bytes(path, pem, mode=0o600)
        except FileExistsError:  # another run created it first: use theirs
            return load_or_create_key(path)
        return key
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SigningError(f"signing key {path} cannot be read as an unencrypted PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"signing key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: short enough to compare by eye, exact enough to trust."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()


def section_digests(report: dict[str, Any]) -> dict[str, str]:
    return {k: hashlib.sha256(canonical_bytes({k: v})).hexdigest() for k, v in report.items()}


def write_signed(run_dir: Path, report: dict[str, Any], key: Ed25519PrivateKey) -> Path:
    """Write report.json (canonical bytes), report.sig and report.pub; returns the report path."""
    run_dir = Path(run_dir)
    data = canonical_bytes(report)
    public = key.public_key()
    signature = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "signed_file": REPORT_FILE,
        "key_id": key_id(public),
        "public_key": base64.b64encode(raw_public_key(public)).decode("ascii"),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "sections_sha256": section_digests(report),
    }
    atomic_write_bytes(run_dir / REPORT_FILE, data)
    atomic_write_json(run_dir / SIGNATURE_FILE, signature)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(run_dir / PUBLIC_KEY_FILE, pem)
    return run_dir / REPORT_FILE


def page_statement(page_file: str, page: bytes, report_sha256: str) -> bytes:
    """The bytes a page signature covers: which page, its SHA-256 and the report.json SHA-256 it shows."""
    return canonical_bytes({"kind": PAGE_STATEMENT_KIND, "page": page_file,
                            "page_sha256": hashlib.sha256(page).hexdigest(), "report_sha256": report_sha256})


def sign_page(run_dir: Path, page_file: str, page: bytes, key: Ed25519PrivateKey) -> bool:
    """Add the page's signature to report.sig (``pages.<file>``); False (nothing written) when report.sig is
    missing or names another key: only the key that signed report.json may vouch for its page."""
    sig_path = Path(run_dir) / SIGNATURE_FILE
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        report_sha256 = hashlib.sha256((Path(run_dir) / REPORT_FILE).read_bytes()).hexdigest()
    except (OSError, ValueError):
        return False
    if not isinstance(sig, dict) or sig.get("key_id") != key_id(key.public_key()):
        return False
    pages = sig.get("pages") if isinstance(sig.get("pages"), dict) else {}
    pages[page_file] = {"sha256": hashlib.sha256(page).hexdigest(), "report_sha256": report_sha256,
                        "signature": base64.b64encode(key.sign(page_statement(page_file, page, report_sha256)))
                        .decode("ascii")}
    sig["pages"] = pages
    atomic_write_json(sig_path, sig)
    return True


def page_signature_valid(sig: dict[str, Any], public: Ed25519PublicKey, page_file: str, page: bytes,
                         report_sha256: str) -> bool:
    """Whether report.sig holds a valid signature by ``public`` over this exact page shown with this report."""
    entry = (sig.get("pages") or {}).get(page_file) if isinstance(sig.get("pages"), dict) else None
    if not isinstance(entry, dict):
        return False
    try:
        signature = base64.b64decode(str(entry.get("signature")), validate=True)
        public.verify(signature, page_statement(page_file, page, report_sha256))
    except (ValueError, InvalidSignature):
        return False
    return True


@dataclass
class Verification:
    """Outcome of ``verify_run``: ``valid`` and, when not, every problem found, in plain words."""

    valid: bool
    key_id: str | None = None
    problems: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)  # which of report.json, report.html differ


def verify_run(run_dir: Path, *, expected_public_key: Path | None = None,
               html_digest_of=None, render_page=None) -> Verification:
    """Check report.json against report.sig (and report.pub, optionally a trusted key, and the page).

    ``html_digest_of`` (``server.report.html.source_digest``: the report SHA-256 a page says it was built
    from) turns on the page check: report.html must name this report.json and be either the page the
    coordinator signed (``pages`` in report.sig) or, failing that, byte for byte the page ``render_page``
    (``server.report.html.rendered_page``) makes of the signed report.json. Both are passed in to keep this
    module free of the HTML code; without ``render_page`` an unsigned page is only checked for naming this
    report.json (what ``fedemo compare`` needs). ``changed_files`` names each file found altered.
    """
    run_dir = Path(run_dir)
    problems: list[str] = []
    changed: list[str] = []
    report_path, sig_path, pub_path = run_dir / REPORT_FILE, run_dir / SIGNATURE_FILE, run_dir / PUBLIC_KEY_FILE
    for path in (report_path, sig_path):
        if not path.is_file():
            problems.append(f"{path} is missing")
    if problems:
        return Verification(False, problems=problems)
    data = report_path.read_bytes()
    try:
        sig = json.loads(sig_path.read_text(encoding="utf-8"))
        public_raw = base64.b64decode(sig["public_key"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(public_raw)
        signature = base64.b64decode(sig["signature"], validate=True)
        if sig.get("algorithm") != ALGORITHM:
            problems.append(f"{sig_path}: algorithm {sig.get('algorithm')!r}, expected {ALGORITHM}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Verification(False, problems=[f"{sig_path} is unreadable or malformed: {err}"])

    kid = key_id(public)
    if sig.get("key_id") != kid:
        problems.append(f"{sig_path}: key_id {sig.get('key_id')} is not the SHA-256 of its public key ({kid})")
    if pub_path.is_file():
        try:
            pub = serialization.load_pem_public_key(pub_path.read_bytes())
            if not isinstance(pub, Ed25519PublicKey) or raw_public_key(pub) != public_raw:
                problems.append(f"{pub_path} holds a different public key than {sig_path}")
        except ValueError as err:
            problems.append(f"{pub_path} is not a PEM public key: {err}")
    else:
        problems.append(f"{pub_path} is missing")
    if expected_public_key is not None:
        try:
            trusted = serialization.load_pem_public_key(Path(expected_public_key).read_bytes())
        except (OSError, ValueError) as err:
            problems.append(f"trusted key {expected_public_key} cannot be read: {err}")
        else:
            if not isinstance(trusted, Ed25519PublicKey) or raw_public_key(trusted) != public_raw:
                problems.append(f"the report was signed with key {kid}, not the trusted key {expected_public_key}")

    report_signed = True
    try:
        public.verify(signature, data)
    except InvalidSignature:
        report_signed = False
        changed.append(REPORT_FILE)
        problems.append("report.json CHANGED: signature does not match report.json (the file was changed after "
                        "signing, or signed by another key); do not rebuild report.html over it: restore both files "
                        "from a trusted copy")
        problems.extend(_describe_change(data, sig))

    if html_digest_of is not None:
        page_problem = _page_problem(run_dir, data, sig, public, kid, report_signed, html_digest_of, render_page)
        if page_problem:
            changed.append(HTML_FILE)
            problems.append(page_problem)
    return Verification(not problems, key_id=kid, problems=problems, changed_files=changed)


def _page_problem(run_dir: Path, data: bytes, sig: dict[str, Any], public: Ed25519PublicKey, kid: str,
                  report_signed: bool, html_digest_of, render_page) -> str | None:
    """Why report.html is not the page of this signed report.json, or None when it is (or when the page is
    the one signed with the original report.json and only report.json changed: reported on its own)."""
    html_path = run_dir / HTML_FILE
    rebuild = f"; rebuild it with `fedemo report {run_dir}`" if report_signed else ""
    if not html_path.is_file():
        return f"{html_path} is missing" + rebuild
    page = html_path.read_bytes()
    current = hashlib.sha256(data).hexdigest()
    entry = (sig.get("pages") or {}).get(HTML_FILE) if isinstance(sig.get("pages"), dict) else None
    shown = str(entry.get("report_sha256")) if isinstance(entry, dict) else ""
    if shown and page_signature_valid(sig, public, HTML_FILE, page, shown):
        if shown == current or not report_signed:
            return None
        return (f"report.html was built from another report.json (sha256 {shown}, the file is {current})"
                + rebuild)
    try:
        built_from = html_digest_of(page.decode("utf-8"))
    except UnicodeDecodeError:
        return f"report.html CHANGED: {html_path} is no longer UTF-8 text" + rebuild
    if built_from != current:
        return f"report.html was built from another report.json (sha256 {built_from}, the file is {current})" + rebuild
    why = ("its signed SHA-256 does not match" if isinstance(entry, dict) else
           "report.sig holds no page signature: a report signed before pages were, or a page rebuilt without the key")
    if not report_signed:  # no trusted report to render the page from
        return f"report.html CHANGED: {html_path} is not the page the coordinator signed ({why})"
    if render_page is None:
        return None
    expected = render_page(json.loads(data.decode("utf-8")), current, kid).encode("utf-8")
    if expected == page:
        return None
    first = next((i for i, (a, b) in enumerate(zip(expected, page)) if a != b), min(len(expected), len(page)))
    near = page[max(0, first - 30):first + 30].decode("utf-8", "replace").replace("\n", " ")
    maybe_version = "" if isinstance(entry, dict) else " (or rendered by another FedEmo version)"
    return (f"report.html CHANGED{maybe_version}: {html_path} is not the page signed with report.json ({why}) and "
            f"differs from "
            f"the page this software renders from the signed report.json at byte {first} (near {near!r})"
            + rebuild)


def _describe_change(data: bytes, sig: dict[str, Any]) -> list[str]:
    """What differs from the signed file, from the diagnostics in report.sig (not themselves proof)."""
    out = []
    size = sig.get("size")
    if isinstance(size, int) and size != len(data):
        out.append(f"report.json is {len(data)} bytes; {size} were signed")
    if sig.get("sha256") and hashlib.sha256(data).hexdigest() != sig["sha256"]:
        out.append(f"report.json SHA-256 is {hashlib.sha256(data).hexdigest()}; {sig['sha256']} was signed")
    try:
        report = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        out.append(f"report.json is no longer valid JSON ({err})")
        return out
    if not isinstance(report, dict):
        out.append("report.json no longer holds a JSON object")
        return out
    if canonical_bytes(report) != data:
        first = next((i for i, (a, b) in enumerate(zip(canonical_bytes(report), data)) if a != b),
                     min(len(data), len(canonical_bytes(report))))
        out.append(f"report.json is not in canonical form (first difference at byte {first}): "
                   "it was re-serialised or edited by hand")
    signed = sig.get("sections_sha256") or {}
    now = section_digests(report)
    changed = sorted(k for k in set(signed) | set(now) if signed.get(k) != now.get(k))
    if changed:
        out.append("sections that differ from the signed ones: " + ", ".join(changed))
    return out
