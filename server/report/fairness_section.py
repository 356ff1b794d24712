"""The report's fairness section: per-group figures of the last round with group counts, and their history."""

from __future__ import annotations

from typing import Any

from server.report.fairness import fairness_history, fairness_view
from server.report.rounds_section import CONFIDENCE


def fairness_sections(config: dict[str, Any], rounds: list[dict[str, Any]],
                      baseline: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fairness per attribute, fairness settings) from the summed per-group counts of the rounds.

    The figures are those of the last round that logged group counts, through
    ``server.report.fairness.fairness_view`` (which suppresses small groups); each
    attribute also gets its gap history over the rounds.
    """
    with_groups = [r for r in rounds if r.get("groups")]
    run_config = config.get("run_config", {})
    if not with_groups:
        return {}, {"status": "no per-group counts in this run (the data has no demographic attributes, "
                              "or the run predates per-group evaluation)"}
    missing = [k for k in ("fairness-min-group-size", "fairness-gap-threshold") if k not in run_config]
    if missing:
        return {}, {"status": f"run config lacks {', '.join(missing)}; fairness figures not computed"}
    min_size, threshold = int(run_config["fairness-min-group-size"]), float(run_config["fairness-gap-threshold"])
    last = with_groups[-1]
    view = fairness_view(last["groups"], min_group_size=min_size, gap_threshold=threshold, confidence=CONFIDENCE,
                         count_noise=last.get("groups_dp"))  # noised counts: unclipped sums, intervals include noise
    history = fairness_history(with_groups, min_group_size=min_size, gap_threshold=threshold, confidence=CONFIDENCE)
    meaningful = not (baseline or {}).get("no_better_than_majority")
    reason = None if meaningful else (
        "the model is no better than always predicting the majority class: group accuracies and gaps reflect "
        "each group's mix of emotions, not how well the model serves it")
    for attribute, figures in view.items():
        figures["group_order"] = list(figures["groups"])  # canonical JSON sorts keys; keep the dataset's order
        figures["history"] = [{"round": h["round"], **h[attribute]} for h in history if attribute in h]
        figures["meaningful"] = meaningful
        figures["not_meaningful_reason"] = reason
    settings = {"status": "ok", "round": last["round"], "min_group_size": min_size, "gap_threshold": threshold,
                "confidence": CONFIDENCE, "eval_count_noise": last.get("groups_dp"), "meaningful": meaningful,
                "not_meaningful_reason": reason}
    return view, settings
