"""``fedemo audit CONFIG [--set key=value ...]``: a simulation with canaries and its empirical lower bound on epsilon.

Imports only the standard library until the command runs (``fedemo --help`` stays quick).
"""

from __future__ import annotations

import argparse
import json


def add_audit_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("audit", help="research run with canaries: an empirical lower bound on epsilon "
                                          "beside the accountant's (audit.json, report)")
    p.add_argument("config", nargs="?", help="a run config TOML from configs/ (omit for pyproject defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one run-config key, e.g. --set audit=client (repeatable; default audit = sample)")
    p.set_defaults(func=audit_command)


def audit_command(args: argparse.Namespace) -> int:
    from simulations.run_config import check_known_keys, parse_overrides

    overrides = parse_overrides(args.overrides)
    check_known_keys(args.config, overrides)
    overrides.setdefault("audit", "sample")
    from simulations.audit.run import AUDIT_FILE, run_audit

    run_dir = run_audit(args.config, overrides)
    audit = json.loads((run_dir / AUDIT_FILE).read_text())
    return 0 if audit["passed"] else 5  # 5: the lower bound is above the claimed epsilon
