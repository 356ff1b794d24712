"""Two runs side by side, per demographic group: what DP (or a fairness option) costs whom.

``compare_runs`` checks both signed reports and writes comparison.json and comparison.html (``compare_html``):
global metrics, each group's accuracy in A and B with the change and its interval (Newcombe, conservative:
it treats the runs as independent), worst groups, gaps and the config keys that differ. Both runs must have
scored the same test rows (``test_rows_check`` compares split digests; different rows are refused unless
allowed, and unconfirmable rows, e.g. in deployment, are said loudly). Privacy often costs minority groups
most (Bagdasaryan et al. 2019), which is what this shows. Details: docs/report.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from server.report.fair_dp_section import FAIR_MODELS
from server.report.compare_html import METRIC_LABELS, _short, render_comparison_html  # noqa: F401 (METRIC_LABELS)
from server.report.html import source_digest
from server.report.plots import pct
from server.report.signing import REPORT_FILE, verify_run

COMPARISON_SCHEMA_VERSION = 1
COMPARISON_JSON = "comparison.json"
COMPARISON_HTML = "comparison.html"
GLOBAL_METRICS = ("accuracy", "macro_f1", "uar", "loss")
PUBLIC_SPLIT_FACTS = ("dataset", "seed", "test-fraction")  # with data-dir: what decides the test rows
IGNORED_CONFIG_KEYS = ("run-name",)  # always differs, says nothing about the runs


class ComparisonError(RuntimeError):
    """An input run folder cannot be compared (named in the message)."""


def load_report(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, facts about it: path, digest, signature verdict)."""
    run_dir = Path(run_dir)
    path = run_dir / REPORT_FILE
    if not path.is_file():
        raise ComparisonError(f"{path} is missing: {run_dir} has no run report (build one with "
                              f"`fedemo report --build {run_dir}`)")
    data = path.read_bytes()
    try:
        report = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ComparisonError(f"{path} is not valid JSON: {err}") from err
    verdict = verify_run(run_dir, html_digest_of=source_digest)
    facts = {"path": str(run_dir), "run_id": report.get("run", {}).get("run_id"),
             "report_sha256": hashlib.sha256(data).hexdigest(),
             "signature": {"valid": verdict.valid, "key_id": verdict.key_id, "problems": verdict.problems}}
    return report, facts


def newcombe_interval(p_a: float, ci_a: list[float], p_b: float, ci_b: list[float]) -> list[float]:
    """Interval of p_b - p_a from the two Wilson intervals (Newcombe 1998, method 10)."""
    d = p_b - p_a
    lo = d - math.sqrt((p_b - ci_b[0]) ** 2 + (ci_a[1] - p_a) ** 2)
    hi = d + math.sqrt((ci_b[1] - p_b) ** 2 + (p_a - ci_a[0]) ** 2)
    return [lo, hi]


def _label(report: dict[str, Any]) -> str:
    config, privacy = report.get("config", {}), report.get("privacy", {})
    parts = [str(report.get("run", {}).get("run_id"))]
    if report.get("run", {}).get("mode") == "centralised":
        return f"{parts[0]}, centralised baseline (one model on the pooled rows, {config.get('num-server-rounds')} " \
               "epochs, no DP)"
    if privacy.get("sample_level_dp"):
        eps = privacy.get("max_epsilon")
        parts.append(f"DP-SGD, max training epsilon {eps:.3g}" if eps is not None else "DP-SGD")
        if privacy.get("max_eval_epsilon") is not None:
            parts.append(f"max evaluation-count epsilon {privacy['max_eval_epsilon']:.3g}")
    else:
        parts.append("no DP-SGD")
    if config.get("central-dp", "off") != "off":
        parts.append(f"central DP {config['central-dp']}")
    if config.get("fairness-reweight"):
        power = float(config.get("fairness-reweight-power", 1.0))
        parts.append(f"reweighted by {config['fairness-reweight']}" + (f" (power {power:g})" if power != 1 else ""))
    fair = report.get("fair_dp") or {}  # server/report/fair_dp_section.py
    if str(fair.get("method", "")).split(" + ")[0] in FAIR_MODELS:  # a front end, alone or with reweighting
        extra = fair.get("extra_epsilon")
        parts.append(f"fairness method {fair['method']}" + ("" if extra is None else f" (extra epsilon {extra:g})"))
    return ", ".join(parts)


def _group_side(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    if figures is None:
        return None
    if figures.get("suppressed"):
        return {"suppressed": True}
    return {k: figures.get(k) for k in ("n", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci")} | {"suppressed": False}


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The side-by-side comparison of two run reports (B relative to A)."""
    out: dict[str, Any] = {"global": {}, "attributes": {}}
    for metric in GLOBAL_METRICS:
        va, vb = a["final"].get(metric), b["final"].get(metric)
        item = {"a": va, "b": vb, "change": vb - va if va is not None and vb is not None else None}
        if metric == "accuracy" and a["final"].get("accuracy_ci") and b["final"].get("accuracy_ci"):
            item["a_ci"], item["b_ci"] = a["final"]["accuracy_ci"], b["final"]["accuracy_ci"]
            item["change_ci"] = newcombe_interval(va, item["a_ci"], vb, item["b_ci"])
        out["global"][metric] = item

    fa, fb = a.get("fairness", {}), b.get("fairness", {})
    for attribute in [x for x in fa if x in fb] + [x for x in fb if x not in fa] + [x for x in fa if x not in fb]:
        ga, gb = fa.get(attribute, {}).get("groups", {}), fb.get(attribute, {}).get("groups", {})
        order = [g for g in (fa.get(attribute, {}).get("group_order", []) + fb.get(attribute, {}).get("group_order", []))
                 if g in ga or g in gb]
        order += sorted(set(ga) | set(gb))
        groups = {}
        for group in dict.fromkeys(order):
            sa, sb = _group_side(ga.get(group)), _group_side(gb.get(group))
            row: dict[str, Any] = {"a": sa, "b": sb, "accuracy_change": None, "accuracy_change_ci": None}
            if sa and sb and not sa["suppressed"] and not sb["suppressed"] and sa.get("accuracy") is not None \
                    and sb.get("accuracy") is not None:
                row["accuracy_change"] = sb["accuracy"] - sa["accuracy"]
                row["accuracy_change_ci"] = newcombe_interval(sa["accuracy"], sa["accuracy_ci"],
                                                              sb["accuracy"], sb["accuracy_ci"])
            groups[group] = row
        changes = {g: r["accuracy_change"] for g, r in groups.items() if r["accuracy_change"] is not None}
        largest = min(changes, key=changes.get) if changes else None

        def side(report_fairness: dict, key: str) -> Any:
            return (report_fairness.get(attribute) or {}).get(key)

        worst_a, worst_b = side(fa, "worst_group") or {}, side(fb, "worst_group") or {}
        gap_a, gap_b = side(fa, "accuracy_gap") or {}, side(fb, "accuracy_gap") or {}
        out["attributes"][attribute] = {
            "groups": groups,
            "group_order": list(groups),
            "largest_drop": {"group": largest, "accuracy_change": changes[largest],
                             "accuracy_change_ci": groups[largest]["accuracy_change_ci"]} if largest else None,
            "worst_group": {"a": worst_a, "b": worst_b,
                            "change": (worst_b["accuracy"] - worst_a["accuracy"])
                            if worst_a.get("accuracy") is not None and worst_b.get("accuracy") is not None else None},
            "accuracy_gap": {"a": gap_a.get("value"), "a_ci": gap_a.get("ci"), "b": gap_b.get("value"),
                             "b_ci": gap_b.get("ci"),
                             "change": (gap_b["value"] - gap_a["value"])
                             if gap_a.get("value") is not None and gap_b.get("value") is not None else None},
            "flagged": {"a": side(fa, "flagged"), "b": side(fb, "flagged")},
        }
    return out


def test_rows_check(a: dict[str, Any], b: dict[str, Any], computed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Did A and B score the same test rows? {"status": "same" | "different" | "unconfirmed", "message", ...}.

    ``computed``: side -> the digest recomputed now from the run's data-dir
    (``simulations.split_digest.split_fingerprint``; None for a deployed run,
    {"error": ...} when it could not be), else each report's recorded one.
    """
    computed = computed or {}
    digests, notes = {}, []
    for side, report in (("a", a), ("b", b)):
        recorded, now = report.get("run", {}).get("test_split"), computed.get(side)
        if now and now.get("error"):
            notes.append(f"{side.upper()}: {now['error']}")
            now = None
        if recorded and now and recorded["sha256"] != now["sha256"]:
            return {"status": "different", "a": digests.get("a"), "b": digests.get("b"),
                    "message": f"the test rows of {side.upper()} are not those it was scored on: its data-dir now "
                               f"holds {_short(now)}, the run recorded {_short(recorded)} (the data changed since)"}
        digests[side] = now or recorded
    out: dict[str, Any] = {"a": digests["a"], "b": digests["b"]}
    if digests["a"] and digests["b"]:
        same = digests["a"]["sha256"] == digests["b"]["sha256"]
        out["status"] = "same" if same else "different"
        out["message"] = (f"both runs scored the same test rows ({_short(digests['a'])})" if same else
                          f"A scored {_short(digests['a'])}, B scored {_short(digests['b'])}")
        return out
    facts = {}
    for key in PUBLIC_SPLIT_FACTS:
        va, vb = a.get("config", {}).get(key), b.get("config", {}).get(key)
        if va != vb:
            facts[key] = [va, vb]
    da, db = a.get("run", {}).get("data_dir") or "", b.get("run", {}).get("data_dir") or ""
    if facts:
        out.update(status="different", message="the test split's settings differ: " + ", ".join(
            f"{k} {v[0]!r} in A, {v[1]!r} in B" for k, v in facts.items()))
        return out
    why = ("deployed runs keep their test rows at the hospitals (a node sending a hash of them would reveal "
           "something about its records), so only the public settings could be compared and they match"
           if not da and not db else
           f"the test rows could not be recomputed ({'; '.join(notes) or 'no digest recorded'}); dataset, seed "
           f"and test-fraction match" + (f", but the data-dirs differ ({da} vs {db})" if da != db else ""))
    out.update(status="unconfirmed", message=f"cannot confirm that A and B scored the same test rows: {why}")
    return out


def findings(comparison: dict[str, Any]) -> list[str]:
    """The comparison in plain sentences."""
    la, lb = comparison["runs"]["a"]["label"], comparison["runs"]["b"]["label"]
    lines = []
    rows = comparison.get("test_rows") or {}
    if rows.get("status") == "different":
        lines.append("WARNING: A and B were scored on DIFFERENT test rows (" + rows["message"] + "): their "
                     "differences mix what was varied with which rows were scored.")
    elif rows.get("status") == "unconfirmed":
        lines.append("WARNING: " + rows["message"][0].upper() + rows["message"][1:] + ".")
    lines.append(f"A = {la}. B = {lb}.")
    if rows.get("status") == "same":
        lines.append(rows["message"][0].upper() + rows["message"][1:] + ".")
    acc = comparison["global"]["accuracy"]
    if acc["change"] is not None:
        lines.append(f"Overall accuracy: {pct(acc['a'])} in A, {pct(acc['b'])} in B, a change of "
                     f"{100 * acc['change']:+.1f} pp"
                     + (f" (95% interval {100 * acc['change_ci'][0]:+.1f} to {100 * acc['change_ci'][1]:+.1f} pp)"
                        if acc.get("change_ci") else "") + ".")
    for attribute, item in comparison["attributes"].items():
        drop = item["largest_drop"]
        text = f"By {attribute}: "
        if drop:
            others = [r["accuracy_change"] for g, r in item["groups"].items()
                      if r["accuracy_change"] is not None and g != drop["group"]]
            verb = "loses most" if drop["accuracy_change"] < 0 else "gains least"
            text += (f"the group that {verb} from A to B is '{drop['group']}' "
                     f"({100 * drop['accuracy_change']:+.1f} pp")
            if len(set(others)) == 1:
                text += f"; the other groups {100 * others[0]:+.1f} pp"
            elif others:
                text += f"; the other groups {100 * min(others):+.1f} to {100 * max(others):+.1f} pp"
            text += ")"
        else:
            text += "no group is reported in both runs"
        wg = item["worst_group"]
        if wg["change"] is not None:
            text += (f"; worst-group accuracy {pct(wg['a'].get('accuracy'))} ('{wg['a'].get('group')}') in A vs "
                     f"{pct(wg['b'].get('accuracy'))} ('{wg['b'].get('group')}') in B")
        gap = item["accuracy_gap"]
        if gap["change"] is not None:
            text += f"; gap between groups {100 * gap['a']:.1f} pp vs {100 * gap['b']:.1f} pp"
        lines.append(text + ".")
    bad = [side for side in ("a", "b") if not comparison["runs"][side]["signature"]["valid"]]
    if bad:
        lines.append("WARNING: the report of " + " and ".join(s.upper() for s in bad) + " did not verify: "
                     + "; ".join(p for s in bad for p in comparison["runs"][s]["signature"]["problems"]))
    if comparison["config_differences"]:
        lines.append("Configuration keys that differ: " + ", ".join(comparison["config_differences"]) + ".")
    else:
        lines.append("The two runs have identical configurations (apart from their names).")
    return lines


def compare_runs(run_a: Path, run_b: Path, out_dir: Path, *, test_splits: dict[str, Any] | None = None,
                 allow_different_test_rows: bool = False) -> Path:
    """Write comparison.json and comparison.html for two run folders; returns the JSON path.

    Refused (``ComparisonError``) when the runs scored different test rows,
    unless ``allow_different_test_rows``; ``test_splits`` as ``test_rows_check``'s ``computed``.
    """
    a, facts_a = load_report(run_a)
    b, facts_b = load_report(run_b)
    rows = test_rows_check(a, b, test_splits)
    if rows["status"] == "different" and not allow_different_test_rows:
        raise ComparisonError(f"{run_a} and {run_b} were scored on different test rows: {rows['message']}; "
                              "compare runs on the same data-dir, seed and test-fraction (or pass "
                              "--allow-different-test-rows to compare them anyway, with a warning)")
    ca, cb = a.get("config", {}), b.get("config", {})
    differences = {k: [ca.get(k), cb.get(k)] for k in sorted(set(ca) | set(cb))
                   if k not in IGNORED_CONFIG_KEYS and ca.get(k) != cb.get(k)}
    comparison = {"schema_version": COMPARISON_SCHEMA_VERSION, "kind": "fedemo-comparison",
                  "runs": {"a": {**facts_a, "label": _label(a)}, "b": {**facts_b, "label": _label(b)}},
                  "config_differences": differences, "test_rows": rows, **compare_reports(a, b)}
    comparison["findings"] = findings(comparison)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / COMPARISON_JSON
    path.write_text(json.dumps(comparison, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    (out_dir / COMPARISON_HTML).write_text(render_comparison_html(comparison), encoding="utf-8")
    return path
