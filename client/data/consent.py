"""Patients' consent, record by record: the manifest beside the data, parsed, checked and applied.

A hospital keeps ``consent.csv`` beside its data (``record,consent,form_version,date``): one line per
record, named as the dataset names it (its file path inside the folder for RAF-DB, CREMA-D and RAVDESS;
for FER2013, whose rows have no name of their own, the row's key in hex, ``client.data.record_keys``),
consent ``yes`` or ``no``, the consent form's version and the date it was given or refused
(YYYY-MM-DD). ``client.data.loaders.registry.load_dataset`` applies it to every folder it reads, before
anything else sees the rows (training, evaluation, feature sums, fairness counts, the data check), so
no path can skip it. Records the manifest does not name follow the policy ``consent-default``
(``exclude``, the default, or ``include``); without a manifest nothing changes and the summary says no
manifest was applied. A malformed manifest is a :class:`ConsentError` naming the file, the line and
the problem: a node never guesses what a patient agreed to.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from client.data.loaders.base import DatasetFormatError, EmotionData, os_problem

MANIFEST_FILE = "consent.csv"
COLUMNS = ("record", "consent", "form_version", "date")
POLICIES = ("exclude", "include")
SHOW = 3  # problems named in a one-line error (the data check lists all)


class ConsentError(DatasetFormatError):
    """A consent manifest that cannot be read as written: the file, the line(s) and what is wrong."""


@dataclass(frozen=True)
class ManifestProblem:
    line: int  # 1-based line in the file (1 = the header)
    problem: str


@dataclass(frozen=True)
class ManifestEntry:
    record: str
    consent: bool
    form_version: str
    date: str  # ISO date
    line: int


@dataclass
class ConsentManifest:
    path: Path
    sha256: str  # of the file's bytes: what leaves the node, so an auditor can match it to the hospital's copy
    entries: dict[str, ManifestEntry]
    problems: list[ManifestProblem] = field(default_factory=list)


@dataclass
class ConsentSummary:
    """What applying a manifest did to one folder; names of records stay on the node."""

    manifest: str  # its path ("" without one)
    sha256: str  # "" without one
    policy: str  # for records the manifest does not name
    consented: int = 0  # named with yes
    refused: int = 0  # named with no
    missing: int = 0  # not named
    excluded: int = 0  # refused, plus missing under "exclude"
    unknown: list[tuple[int, str]] = field(default_factory=list)  # (line, id) the folder does not hold

    @property
    def applied(self) -> bool:
        return bool(self.sha256)


def manifest_path(root: str | Path, override: str | Path | None = None) -> Path | None:
    """The manifest that governs ``root``: ``override`` if given (it must exist), else ``root/consent.csv``."""
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ConsentError(path, "consent manifest not found (named by the node config's consent-manifest)")
        return path
    path = Path(root) / MANIFEST_FILE
    try:
        return path if path.is_file() else None
    except OSError as err:  # an unreadable folder: whether a manifest governs it cannot be known, so nothing is read
        raise ConsentError(path, f"cannot tell whether a consent manifest is here: {(err.strerror or str(err)).lower()}")


def manifest_stamp(root: str | Path, override: str | Path | None = None) -> tuple:
    """(path, modification time, size) of the manifest governing ``root``, or (): a cache key that changes with it."""
    try:
        path = manifest_path(root, override)
    except ConsentError:
        return ("missing", str(override))
    if path is None:
        return ()
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


def read_manifest(path: str | Path) -> ConsentManifest:
    """Parse a manifest, collecting every problem (bad line, duplicate, bad value or date) with its line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConsentError(path, f"cannot read the consent manifest: {os_problem(err)}") from None
    digest = hashlib.sha256(raw).hexdigest()
    text = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # Excel's byte-order mark is not part of the header
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConsentError(path, f"the consent manifest is not UTF-8 text (byte {err.start}); save it as UTF-8 "
                                 "CSV") from None
    manifest = ConsentManifest(path=path, sha256=digest, entries={})
    rows = [(number, row) for number, row in enumerate(csv.reader(lines), start=1)]
    if not rows:
        raise ConsentError(path, f"the consent manifest is empty; its first line must be {','.join(COLUMNS)}")
    header = [name.strip().lower() for name in rows[0][1]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ConsentError(path, f"line 1: the header lacks {', '.join(missing)} (it must name "
                                 f"{','.join(COLUMNS)}; it reads {','.join(rows[0][1])!r})")
    twice = sorted({c for c in header if c and header.count(c) > 1})
    if twice:
        raise ConsentError(path, f"line 1: column {twice[0]!r} appears twice in the header")
    where = {c: header.index(c) for c in COLUMNS}
    for number, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # blank lines are harmless
        problem = _entry_problem(row, where, len(header))
        if isinstance(problem, str):
            manifest.problems.append(ManifestProblem(number, problem))
            continue
        entry = replace(problem, line=number)
        first = manifest.entries.get(entry.record)
        if first is not None:
            manifest.problems.append(ManifestProblem(number, f"record {entry.record!r} is listed again (first on "
                                                             f"line {first.line}); list each record once"))
            continue
        manifest.entries[entry.record] = entry
    return manifest


def _entry_problem(row: list[str], where: dict[str, int], width: int) -> ManifestEntry | str:
    """The entry a data line holds, or what is wrong with it."""
    if len(row) != width:
        return f"{len(row)} fields where the header has {width} (a comma inside an unquoted record id?)"
    record, consent, form, date = (row[where[c]].strip() for c in COLUMNS)
    if not record:
        return "no record id"
    if consent.lower() not in ("yes", "no"):
        return f"consent {consent!r} for record {record!r}: write yes or no"
    if not form:
        return f"no form_version for record {record!r}"
    try:
        when = datetime.date.fromisoformat(date)
    except ValueError:
        return f"date {date!r} for record {record!r} is not a date as YYYY-MM-DD"
    if when > datetime.date.today() + datetime.timedelta(days=1):
        return f"date {date} for record {record!r} lies in the future"
    return ManifestEntry(record=record, consent=consent.lower() == "yes", form_version=form, date=when.isoformat(),
                         line=0)


def raise_problems(manifest: ConsentManifest) -> None:
    """A ``ConsentError`` in one line naming the first problems and how many there are; nothing if none."""
    if not manifest.problems:
        return
    named = "; ".join(f"line {p.line}: {p.problem}" for p in manifest.problems[:SHOW])
    more = f" (and {len(manifest.problems) - SHOW} more; `fedemo data check` lists all)" \
        if len(manifest.problems) > SHOW else ""
    raise ConsentError(manifest.path, f"malformed consent manifest, {len(manifest.problems)} bad line(s): "
                                      f"{named}{more}")


def record_ids(data: EmotionData) -> list[str]:
    """Each row's record id as a manifest names it: its file path, or a FER2013 row's key in hex."""
    from client.data.record_keys import record_keys

    if data.dataset == "fer2013":
        return [key.hex() for key in record_keys(data)]
    return [str(ref) for ref in data.refs]


def apply_manifest(data: EmotionData, manifest: ConsentManifest | None, policy: str) -> EmotionData:
    """``data`` without the rows the manifest (or the policy, for rows it does not name) excludes.

    The result's ``consent`` says what was applied. Raises :class:`ConsentError` for a malformed manifest
    and ``ValueError`` for an unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"consent-default {policy!r}: choose {' or '.join(POLICIES)}")
    if manifest is None:
        data.consent = ConsentSummary(manifest="", sha256="", policy=policy, missing=len(data))
        return data
    raise_problems(manifest)
    ids = record_ids(data)
    status = np.array([_status(manifest.entries.get(record)) for record in ids], dtype=object)
    keep = (status == "yes") | ((status == "missing") & (policy == "include"))
    held = set(ids)
    summary = ConsentSummary(
        manifest=str(manifest.path), sha256=manifest.sha256, policy=policy, consented=int(np.sum(status == "yes")),
        refused=int(np.sum(status == "no")), missing=int(np.sum(status == "missing")), excluded=int(np.sum(~keep)),
        unknown=sorted((e.line, e.record) for e in manifest.entries.values() if e.record not in held))
    kept = data if keep.all() else data.subset(np.flatnonzero(keep))
    kept.consent = summary
    return kept


def _status(entry: ManifestEntry | None) -> str:
    return "missing" if entry is None else ("yes" if entry.consent else "no")


def load_consented(data: EmotionData, root: str | Path, policy: str = "exclude",
                   override: str | Path | None = None) -> EmotionData:
    """``data`` (read from ``root``) with its folder's manifest applied: the one step every loader's result takes."""
    path = manifest_path(root, override)
    return apply_manifest(data, None if path is None else read_manifest(path), policy)

