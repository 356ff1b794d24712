"""Does a node's privacy ledger still hold every chain head the coordinator recorded?

Each DP reply carries the node's ledger head after that release; the coordinator keeps them in
metrics.jsonl and the signed report. A ledger with deleted events, or replaced by a fresh one, no longer
holds them, however consistent in itself. The report's ledger check and ``fedemo verify --ledger`` both
answer with ``chain_check``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def recorded_heads(train: list[tuple[int, dict[str, Any]]],
                   evaluation: list[tuple[int, str]] = ()) -> list[dict[str, Any]]:
    """The heads a client's replies carried: after each training spend (its metrics.jsonl "dp" entries) and after
    each noised evaluation-count release ((round, head)), in round order; replies without a head are left out."""
    heads = [{"round": r, "after": "train", "head": dp["ledger_head"]} for r, dp in train if dp.get("ledger_head")]
    heads += [{"round": r, "after": "evaluation", "head": head} for r, head in evaluation if head]
    return sorted(heads, key=lambda h: (h["round"], h["after"] != "train"))


def chain_check(path: Path, heads: list[dict[str, Any]]) -> dict[str, Any]:
    """``ok``: the ledger at ``path`` loads (its chain is intact) and its chain contains every recorded head.

    ``status`` says which: "chain holds every recorded head", "heads missing"
    (``missing_rounds`` names the rounds whose heads are gone), "unreadable"
    (``detail``: the ledger's own error, e.g. a broken chain), or "no heads
    recorded" (a node that predates hash-chained ledgers: nothing to check,
    not a failure).
    """
    from shared_models.privacy_ledger import LedgerError, PrivacyLedger

    try:
        ledger = PrivacyLedger.load(Path(path))
    except LedgerError as err:
        return {"status": "unreadable", "ok": False, "detail": str(err), "heads_recorded": len(heads),
                "missing_rounds": sorted({h["round"] for h in heads})}
    if not heads:
        return {"status": "no heads recorded", "ok": True, "heads_recorded": 0, "missing_rounds": [],
                "ledger_head": ledger.chain_head()}
    known = set(ledger.event_hashes())
    missing = sorted({h["round"] for h in heads if h["head"] not in known})
    out = {"status": "heads missing" if missing else "chain holds every recorded head", "ok": not missing,
           "heads_recorded": len(heads), "missing_rounds": missing, "ledger_head": ledger.chain_head()}
    if missing:
        out["detail"] = (f"the ledger's chain lacks the head the node reported after round(s) "
                         f"{', '.join(map(str, missing))}: events were deleted or the ledger was replaced")
    return out
