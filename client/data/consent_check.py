"""What ``fedemo data check`` says about a folder's consent manifest: every bad line, and the coverage.

Coverage counts the records the loader read by what the manifest says of them (yes, no, not named) and
how many the node will leave out under its policy; ids the manifest names that the folder does not hold
(a misspelt path, a file since deleted) are listed with their line. A malformed manifest makes the folder
NOT READY (the node would refuse it), each problem on its own line.
"""

from __future__ import annotations

import csv
from pathlib import Path

from client.data.consent import COLUMNS, ConsentError, ConsentSummary, manifest_path, read_manifest, record_ids

SHOW = 10


def check_manifest(folder: str | Path, override: str | Path | None, report) -> bool:
    """False (with each problem in ``report.problems``) when the manifest cannot be applied."""
    try:
        path = manifest_path(folder, override)
        if path is None:
            return True
        manifest = read_manifest(path)
    except ConsentError as err:
        report.problems.append(str(err))
        report.consent = {"manifest": err.path, "problems": [err.problem]}
        return False
    if not manifest.problems:
        return True
    report.consent = {"manifest": str(path), "problems": [f"line {p.line}: {p.problem}" for p in manifest.problems]}
    report.problems += [f"{path}: line {p.line}: {p.problem}" for p in manifest.problems]
    return False


def describe_coverage(summary: ConsentSummary | None, report) -> None:
    """``report.consent`` from what applying the manifest did; a warning per kind of gap."""
    if summary is None:
        return
    if not summary.applied:
        report.consent = {"manifest": "", "applied": False}
        report.warnings.append("no consent manifest (consent.csv): every record is used; a node reports that no "
                               "consent manifest was applied")
        return
    report.consent = {"manifest": summary.manifest, "applied": True, "sha256": summary.sha256,
                      "policy": summary.policy, "yes": summary.consented, "no": summary.refused,
                      "missing": summary.missing, "excluded": summary.excluded,
                      "unknown": [{"line": line, "record": record} for line, record in summary.unknown]}
    if summary.missing:
        fate = "left out" if summary.policy == "exclude" else "USED (consent-default = include)"
        report.warnings.append(f"{summary.missing} record(s) are not named in the consent manifest: {fate}")
    if summary.unknown:
        first = ", ".join(f"line {line}: {record}" for line, record in summary.unknown[:3])
        report.warnings.append(f"{len(summary.unknown)} record id(s) in the consent manifest match no record in the "
                               f"folder (misspelt, or the file is gone; {first})")


def coverage_lines(consent: dict) -> list[str]:
    """The data check's consent lines in plain words."""
    if not consent:
        return []
    if consent.get("problems"):
        return [f"  consent manifest {consent['manifest']}: {len(consent['problems'])} problem(s) (listed above)"]
    if not consent.get("applied"):
        return ["  consent: no manifest; every record is used"]
    lines = [f"  consent ({consent['manifest']}, sha256 {consent['sha256'][:12]}...): yes {consent['yes']}, "
             f"no {consent['no']}, not named {consent['missing']} (consent-default {consent['policy']}); "
             f"{consent['excluded']} record(s) left out, the counts above exclude them"]
    for item in consent["unknown"][:SHOW]:
        lines.append(f"  consent manifest line {item['line']}: {item['record']} matches no record in the folder")
    if len(consent["unknown"]) > SHOW:
        lines.append(f"  ... and {len(consent['unknown']) - SHOW} more unknown ids (--json lists all)")
    return lines


def write_template(dataset: str, folder: str | Path, out: str | Path, task: str | None = None) -> int:
    """Write ``out``: a manifest naming every record of the folder, consent, form and date left blank to fill in.

    The one way to get FER2013's row keys (and the exact paths the loader reads) without reading code. Refuses
    to overwrite a file. Returns the number of records named.
    """
    from client.data.loaders.registry import every_record

    out = Path(out)
    if out.exists():
        raise ConsentError(out, "exists already; the template is never written over a file (a manifest?)")
    ids = list(dict.fromkeys(record_ids(every_record(dataset, folder, task))))  # identical FER2013 rows: once
    with open(out, "x", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows([record, "", "", ""] for record in ids)
    return len(ids)
