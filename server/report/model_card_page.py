"""``model_card.html``: the model card for people, rendered from the signed ``model_card.json`` alone.

The page is a pure function of the card (no clock, no machine facts of its own), so ``fedemo verify`` checks
it by rendering the signed card again and comparing bytes: an edited page never passes as the card's.
"""

from __future__ import annotations

from html import escape
from typing import Any

from server.report.page_style import CSS

CARD_PAGE_FILE = "model_card.html"
FORM_TITLES = {"pytorch_fp32": "PyTorch fp32", "onnxruntime_fp32": "ONNX Runtime fp32",
               "onnxruntime_int8": "ONNX Runtime int8"}


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _table(head: list[str] | None, rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head or [])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<table><thead><tr>{cells}</tr></thead>" if head else "<table>") + f"<tbody>{body}</tbody></table>"


def _training(card: dict[str, Any]) -> str:
    t = card.get("training") or {}
    eps = t.get("epsilon_per_hospital") or {}
    facts = [["Run", escape(str(t.get("run_id")))], ["Dataset, task, model",
             escape(f"{t.get('dataset')}, {t.get('task')}, {t.get('model')}")],
             ["Hospitals, rounds", escape(f"{t.get('num_hospitals')}, {t.get('rounds')}")],
             ["Largest epsilon per hospital", _num(t.get("max_epsilon"), 2) if t.get("max_epsilon") is not None
              else "no sample-level DP"],
             ["Accuracy the signed report states", _num(t.get("final_accuracy_reported"))]]
    per_hospital = _table(["hospital", "epsilon"], [[escape(h), _num(e, 2)] for h, e in sorted(eps.items())])
    return "<h2>How it was trained</h2>" + _table(None, facts) + (per_hospital if eps else "")


def _forms(card: dict[str, Any]) -> str:
    export = card.get("export") or {}
    forms = export.get("forms") or {}
    rows = [[escape(FORM_TITLES.get(name, name)), f"{row.get('size_bytes', 0) / 1024:.0f} KiB",
             _num(row.get("p50_ms"), 2), _num(row.get("p95_ms"), 2), _num(row.get("throughput_per_s"), 0),
             _num(row.get("accuracy"))] for name, row in forms.items()]
    calibration = (export.get("calibration") or {}).get("source", "no int8 export")
    return ("<h2>The exported forms</h2>" + _table(["form", "size", "p50 ms", "p95 ms", "per second (1 thread)",
                                                   "accuracy"], rows)
            + f"<p>Measured on {escape(str(export.get('n_test')))} test inputs ({escape(str(export.get('test_inputs')))})"
            f", one thread. int8 calibration set: {escape(str(calibration))}.</p>")


def _groups(card: dict[str, Any]) -> str:
    forms = (card.get("export") or {}).get("forms") or {}
    fp32, int8 = forms.get("onnxruntime_fp32") or {}, forms.get("onnxruntime_int8")
    if not int8:
        return ""
    flagged = {str(line).split(":")[0] for line in (card.get("export") or {}).get("int8_groups_losing_over_2_points")
               or []}  # "attribute=group: fp32 -> int8 (n=...)", as the export wrote them
    rows = []
    for attribute, groups in sorted((fp32.get("groups") or {}).items()):
        for group, cell in sorted(groups.items()):
            after = ((int8.get("groups") or {}).get(attribute) or {}).get(group) or {}
            change = (after.get("accuracy", 0) - cell.get("accuracy", 0)) * 100
            flag = " <strong>loses more than 2 points</strong>" if f"{attribute}={group}" in flagged else ""
            rows.append([escape(attribute), escape(group), str(cell.get("n")), _num(cell.get("accuracy")),
                         _num(after.get("accuracy")), f"{change:+.1f}{flag}"])
    return ("<h2>What int8 costs each group</h2>"
            + _table(["attribute", "group", "n", "fp32", "int8", "points"], rows))


def render_card_page(card: dict[str, Any]) -> bytes:
    """The card's page, byte for byte the same for the same card."""
    t = card.get("training") or {}
    title = f"Model card: {t.get('model')} of run {t.get('run_id')}"
    body = (f"<h1>{escape(title)}</h1><p>Every figure on this page is from <code>model_card.json</code>, signed "
            "with the run's key; <code>fedemo verify</code> checks the card and this page.</p>"
            + _training(card) + _forms(card) + _groups(card))
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            f"content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title><style>{CSS}</style>"
            f"</head><body><main>{body}</main></body></html>\n").encode("utf-8")
