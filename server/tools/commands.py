"""The coordinator's ``fedemo`` commands: the federation's credentials, and the signed report an auditor checks.

    fedemo credentials init OUT_DIR --superlink-host H --hospital NAME ...   CA, TLS certificate, node key pairs
    fedemo credentials add-hospital OUT_DIR NAME     one more hospital's key pair
    fedemo verify RUN_DIR [--public-key PEM] [--ledger CLIENT_ID=PATH ...]   as signed? (exit codes: docs/report.md)
    fedemo report RUN_DIR [--build]                  rebuild report.html from report.json (--build: report.json too)

``simulations.cli`` mounts them; heavy imports wait inside each command, so ``fedemo --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from pathlib import Path


def add_coordinator_commands(commands: argparse._SubParsersAction) -> None:
    """``credentials init``, ``credentials add-hospital``, ``verify`` and ``report``."""
    creds = commands.add_parser("credentials", help="TLS and SuperNode-authentication files for a deployed federation")
    creds_sub = creds.add_subparsers(dest="credentials_command", required=True)
    p = creds_sub.add_parser("init", help="create a CA, the SuperLink's TLS certificate and hospital key pairs")
    p.add_argument("out_dir", type=Path, help="a new folder for the credentials")
    p.add_argument("--superlink-host", action="append", default=[], metavar="NAME",
                   help="a DNS name nodes use to reach the SuperLink (repeatable; a SAN of its certificate)")
    p.add_argument("--superlink-ip", action="append", default=[], metavar="IP",
                   help="an IP address nodes use to reach the SuperLink (repeatable; a SAN of its certificate)")
    p.add_argument("--hospital", action="append", default=[], metavar="NAME", help="a hospital (repeatable)")
    p.add_argument("--days", type=int, default=365, help="validity of the SuperLink certificate")
    p.set_defaults(func=credentials_command)
    p = creds_sub.add_parser("add-hospital", help="a key pair for one more hospital")
    p.add_argument("out_dir", type=Path, help="the folder `credentials init` wrote")
    p.add_argument("name")
    p.set_defaults(func=credentials_command)

    p = commands.add_parser("verify", help="check a run's signed report and its page: valid, or exactly which file "
                                           "does not match (exit 3: incomplete or resumable, 5: no report yet)")
    p.add_argument("run_dir", type=Path, help="the run folder (holds report.json, report.sig, report.pub)")
    p.add_argument("--public-key", type=Path, default=None, help="the coordinator's trusted public key (PEM)")
    p.add_argument("--ledger", action="append", default=[], metavar="CLIENT_ID=PATH",
                   help="a hospital's privacy_ledger.json to check against the chain heads the signed report "
                        "recorded for that client (repeatable; exit 4 when its chain lacks one)")
    p.set_defaults(func=verify_command)
    p = commands.add_parser("report", help="rebuild a run's report.html from its report.json (UNVERIFIED banner "
                                           "and exit 1 when report.json does not verify)")
    p.add_argument("run_dir", type=Path, help="the run folder")
    p.add_argument("--build", action="store_true", help="also build and sign report.json from the run's metrics")
    p.set_defaults(func=report_command)


def fail(message: str) -> int:
    """One line on stderr, exit code 2: an input the user can fix."""
    print(f"fedemo: error: {message}", file=sys.stderr)
    return 2


def credentials_command(args: Namespace) -> int:
    from server.tools import federation_credentials as fc

    try:
        if args.credentials_command == "init":
            federation = fc.init_federation(args.out_dir, args.superlink_host, args.superlink_ip, args.hospital,
                                            server_days=args.days)
        else:
            fc.add_hospital(args.out_dir, args.name)
            federation = fc.load_federation(args.out_dir)
    except fc.CredentialsError as err:
        return fail(str(err))
    print(fc.describe(args.out_dir, federation))
    return 0


def verify_command(args: Namespace) -> int:
    from server.report.html import rendered_page, source_digest
    from server.report.signing import verify_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        return fail(f"{run_dir} is not a folder")
    ledgers = []
    for spec in args.ledger:
        client_id, sep, path = spec.partition("=")
        if not sep or not client_id or not path:
            return fail(f"--ledger {spec!r}: expected CLIENT_ID=PATH (e.g. --ledger 3=/srv/node/privacy_ledger.json)")
        ledgers.append((client_id, Path(path).expanduser()))
    checkpoint = checkpoint_round(run_dir)
    if not (run_dir / "report.json").is_file():
        return no_report(run_dir, checkpoint)
    result = verify_run(run_dir, expected_public_key=args.public_key, html_digest_of=source_digest,
                        render_page=rendered_page)
    from server.report.model_card import check_card

    check_card(run_dir, result)  # model_card.json (fedemo export), when there is one: signed with the report's key
    if not result.valid:
        changed = " and ".join(result.changed_files)
        print(f"INVALID: {changed} CHANGED in {run_dir}" if changed else f"INVALID: {run_dir / 'report.json'}")
        for problem in result.problems:
            print(f"  - {problem}")
        return 1
    import json

    # The signed content is now trusted: a run that stopped early is not called simply "valid" (exit 3), nor one
    # whose privacy ledger check failed, in the report or against a ledger passed here (exit 4).
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    run = report.get("run") or {}
    advice = "" if args.public_key else (" (compare this key id with the coordinator's published one, "
                                         "or pass --public-key)")
    ledger_failures = ledger_problems(report, ledgers)
    if isinstance(ledger_failures, str):
        return fail(ledger_failures)
    if ledger_failures:
        print(f"signature valid, PRIVACY LEDGER CHECK FAILED: {run_dir / 'report.json'} is exactly as signed by key "
              f"{result.key_id}, but its privacy figures are not all on record in the hospitals' ledgers" + advice)
        for problem in ledger_failures:
            print(f"  - {problem}")
        return 4
    for client_id, path in ledgers:
        print(f"ledger of client {client_id} ({path}): its chain holds every head the report recorded")
    ended = run.get("diverged") or run.get("stopped")
    if ended:  # the guard or a non-finite model stopped it: signed as it happened, never a valid run
        kind = "DIVERGED" if run.get("diverged") else "STOPPED"
        print(f"signature valid, run {kind}: {run_dir / 'report.json'} is exactly as signed by key {result.key_id}, "
              f"but the run ended on a failure: {ended.get('reason')}; its saved model is not the planned run's "
              f"(exit 6)" + advice)
        return 6
    if run.get("incomplete"):
        interrupted = run.get("interrupted") if isinstance(run.get("interrupted"), dict) else {}
        resumable = checkpoint is not None and checkpoint >= 0
        print(f"signature valid, run INCOMPLETE ({'resumable' if resumable else 'not resumable: no checkpoint'}): "
              f"{run_dir / 'report.json'} is exactly as signed by key "
              f"{result.key_id}, but the run stopped after {run.get('rounds_completed')} of "
              f"{run.get('rounds_planned')} planned rounds"
              + (" (interrupted)" if interrupted else " (no summary: the coordinator did not finish)")
              + "; its figures are not those of the planned run" + advice)
        if interrupted.get("resume") or resumable:
            print(f"  to continue: {interrupted.get('resume') or f'fedemo simulate --resume {run_dir}'}")
        return 3
    print(f"valid: {run_dir / 'report.json'} is exactly as signed by key {result.key_id}, and report.html is its "
          f"page{advice}")
    return 0


def checkpoint_round(run_dir: Path) -> int | None:
    """The last completed round in the run folder's checkpoint.npz; None without one, -1 when unreadable.

    Reads only the checkpoint's JSON entry (``allow_pickle=False``), not its weights.
    """
    import json
    import zipfile

    import numpy as np

    path = run_dir / "checkpoint.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return int(json.loads(str(npz["meta"]))["round"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return -1


def no_report(run_dir: Path, checkpoint: int | None) -> int:
    """verify on a folder without report.json: resumable (exit 3) when a checkpoint exists, else no report yet (5)."""
    import json

    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        planned = int((config.get("run_config") or {}).get("num-server-rounds"))
    except (OSError, ValueError, TypeError, AttributeError):
        planned = None
    if checkpoint is None or checkpoint < 0:
        what = ("its checkpoint.npz is unreadable" if checkpoint == -1 else
                "and no checkpoint: the run is still running, or stopped before completing a round"
                if (run_dir / "config.json").is_file() else "and no config.json: not a FedEmo run folder, or the "
                                                            "run has not started")
        print(f"NO REPORT YET: {run_dir} holds no report.json {what}; nothing to verify")
        return 5
    if planned is not None and checkpoint >= planned:
        print(f"run INCOMPLETE (resumable): {run_dir} holds no report.json, but its checkpoint holds all "
              f"{checkpoint} of {planned} planned rounds (the coordinator stopped before writing the report)")
        print(f"  to finish: fedemo simulate --resume {run_dir}   (or build the report: fedemo report --build "
              f"{run_dir})")
    else:
        print(f"run INCOMPLETE (resumable): {run_dir} holds no report.json; its checkpoint holds round "
              f"{checkpoint} of {planned if planned is not None else '?'} planned")
        print(f"  to continue: fedemo simulate --resume {run_dir}")
    return 3


def ledger_problems(report: dict, ledgers: list[tuple[str, Path]]) -> list[str] | str:
    """Why the signed report's privacy figures are not all on record: its own ledger check, then each --ledger.

    A str is an input error (a client the report does not name, a missing file).
    """
    from server.report.ledger_chain import chain_check

    privacy = report.get("privacy") or {}
    check = privacy.get("ledger_check") or {}
    problems = []
    if check.get("ok") is False:
        problems.append(f"the report's ledger check failed: {check.get('status')}")
        problems += [f"client {c.get('client_id')}: {c.get('status')}"
                     + (f" ({'; '.join(c['differing_fields'])})" if c.get("differing_fields") else "")
                     for c in check.get("clients", []) if c.get("status") not in ("match", "ledger ahead",
                                                                                  "not available")]
    heads = {str(c.get("client_id")): c.get("ledger_heads") for c in privacy.get("clients", [])}
    for client_id, path in ledgers:
        if client_id not in heads:
            return f"--ledger {client_id}=...: the report has no DP-SGD client {client_id!r}"
        if not path.is_file():
            return f"--ledger {client_id}={path}: no such file"
        if not heads[client_id]:
            problems.append(f"client {client_id}: the report recorded no ledger head to check {path} against")
            continue
        chain = chain_check(path, heads[client_id])
        if not chain["ok"]:
            problems.append(f"client {client_id} ({path}): {chain['status']}: "
                            + str(chain.get("detail") or ""))
    return problems


def report_command(args: Namespace) -> int:
    """Rebuild report.html (signed when the coordinator's key is here); a report.json that does not verify
    gets a page with the UNVERIFIED banner and exit 1, never a clean-looking page."""
    from server.report.build import ReportError
    from server.report.html import write_html
    from server.report.signing import SigningError, verify_run

    run_dir = Path(args.run_dir)
    try:
        if args.build:
            from server.report.build import write_report

            print(f"Built and signed {write_report(run_dir, run_key(run_dir, create=True))}")
            path = run_dir / "report.html"
        elif not (run_dir / "report.json").is_file():
            return fail(f"{run_dir / 'report.json'} is missing; `fedemo report --build {run_dir}` builds and signs "
                        "one from the run's metrics")
        else:
            path = write_html(run_dir, run_key(run_dir, create=False))
    except (ReportError, SigningError, ValueError) as err:
        return fail(str(err))
    verdict = verify_run(run_dir)
    if not verdict.valid:
        print(f"Wrote {path} with an UNVERIFIED banner: report.json does not verify, the page shows an altered "
              "or unsigned report:\n  - " + "\n  - ".join(verdict.problems), file=sys.stderr)
        return 1
    print(f"Wrote {path}")
    return 0


def run_key(run_dir: Path, *, create: bool):
    """The coordinator's key the run was told to use (run-config ``signing-key``, else the default); with
    ``create`` False, None when that key file does not exist or cannot be read (the page then stays unsigned,
    verifiable by re-rendering)."""
    from server.report.build import ReportError, coordinator_key, read_run
    from server.report.signing import SigningError, default_key_path

    try:
        run_config = read_run(run_dir)[0].get("run_config", {})  # the key the run itself was told to use
    except (ReportError, OSError, ValueError):  # no metrics: a page rebuild needs only report.json
        if create:
            raise
        run_config = {}
    runs_dir = Path(str(run_config.get("runs-dir") or run_dir)).resolve()
    if not run_dir.resolve().is_relative_to(runs_dir):  # a moved run folder: guard that folder itself
        runs_dir = run_dir.resolve()
    if not create and not default_key_path(str(run_config.get("signing-key", ""))).is_file():
        return None
    try:
        return coordinator_key(str(run_config.get("signing-key", "")), runs_dir)
    except SigningError:
        if create:
            raise
        return None
