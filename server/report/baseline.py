"""What a model that learned nothing would score, and what each hospital's own test rows say.

``baseline_section``: the test rows' true-class totals (the row sums of the
summed confusion matrix metrics.jsonl already holds) give the majority-class
rate (always predicting the most common emotion) and the chance rate (a
uniform guess, 1/7); a model whose accuracy interval does not clear the
majority rate is called no better than the majority class, and the report's
group claims are then marked as not meaningful (``build.fairness_sections``).

``hospitals_section``: each hospital's test accuracy and sample count as it
reported them, per round; under evaluation DP noise those are noised counts
and the section says so rather than give them intervals.
"""

from __future__ import annotations

from typing import Any

from server.report.fairness import wilson_interval
from shared_models.taxonomy import EMOTIONS

CONFIDENCE = 0.95  # as build.CONFIDENCE: the level of every interval in the report
CHANCE_METHOD = "a uniform random guess over the 7 emotions: 1/7"
MAJORITY_RULE = ("no better than the majority class when the lower end of the accuracy's 95% interval is at or "
                 "below the rate of always predicting the test rows' most common emotion")


def eval_counts_noised(config: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether a round's evaluation counts carry the nodes' DP noise (``eval-dp-noise-multiplier`` > 0)."""
    run_config = config.get("run_config", {})
    return bool(entry.get("groups_dp")) or bool(run_config.get("dp")) and float(
        run_config.get("eval-dp-noise-multiplier") or 0.0) > 0


def baseline_section(config: dict[str, Any], last: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """What accuracy a model that learned nothing gets on the same test rows, and whether this one beat it.

    The test rows' true-class totals are the row sums of the last round's
    summed confusion matrix: always predicting the most common emotion scores
    its share (the majority rate); a uniform random guess scores 1/7 (chance).
    """
    counts = final.get("confusion")
    out: dict[str, Any] = {"round": final.get("round"), "chance_rate": 1 / len(EMOTIONS),
                           "chance_method": CHANCE_METHOD, "rule": MAJORITY_RULE,
                           "counts_noised": eval_counts_noised(config, last)}
    totals = [int(sum(row)) for row in counts] if counts else []
    n = sum(totals)  # noised counts: unclipped sums (unbiased), which a tiny test split can bring to 0 or below
    if n <= 0:
        out.update(status="no confusion counts in the last round: majority rate unknown", class_totals=None,
                   majority_class=None, majority_rate=None, no_better_than_majority=None, warning=None)
        return out
    top = max(range(len(totals)), key=lambda k: totals[k])
    majority = min(max(totals[top] / n, 0.0), 1.0)  # a rate: clipped for display, as every rate of noised counts
    accuracy, ci = final.get("accuracy"), final.get("accuracy_ci")
    low = ci[0] if ci else accuracy
    no_better = low is not None and low <= majority
    warning = None
    if no_better:
        where = ("includes" if ci and ci[1] >= majority else "falls below") if ci else "is at or below"
        warning = (f"No better than the majority class: accuracy {100 * accuracy:.1f}%"
                   + (f" (95% interval {100 * ci[0]:.1f}% to {100 * ci[1]:.1f}%)" if ci else "")
                   + f" {where} the {100 * majority:.1f}% of always predicting '{EMOTIONS[top]}', the most common "
                   "emotion in the test rows. The model may have learned nothing; per-group differences then reflect "
                   "each group's mix of emotions, not how well the model serves it.")
    out.update(status="ok", n=n, class_totals=dict(zip(EMOTIONS, totals)), majority_class=EMOTIONS[top],
               majority_rate=majority, accuracy=accuracy, accuracy_ci=ci, no_better_than_majority=no_better,
               warning=warning)
    return out


def hospitals_section(config: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each hospital's test accuracy and sample count as it reported them (metrics.jsonl's per-client counts)."""
    per_client: dict[str, list[dict[str, Any]]] = {}
    noised_any = False
    for entry in rounds:
        noised = eval_counts_noised(config, entry)
        for client in (entry.get("evaluate") or {}).get("clients", []):
            n, accuracy = client.get("num_examples"), client.get("accuracy")
            noised_any |= noised
            row = {"round": entry["round"], "num_examples": n, "accuracy": accuracy,
                   "skipped": client.get("skipped", 0), "counts_noised": noised}
            # Wilson interval from the exact counts; noised counts have no such interval
            row["accuracy_ci"] = (wilson_interval(round(accuracy * n), n, CONFIDENCE)
                                  if accuracy is not None and n and not noised else None)
            per_client.setdefault(str(client["client"]), []).append(row)
    clients = []
    for client_id in sorted(per_client, key=lambda c: (len(c), c)):
        history = per_client[client_id]
        latest = history[-1]
        clients.append({"client_id": client_id, **{k: v for k, v in latest.items()},
                        "initial_accuracy": history[0]["accuracy"] if history[0]["round"] == 0 else None,
                        "history": [{k: h[k] for k in ("round", "accuracy", "num_examples")} for h in history]})
    return {"counts_noised": noised_any, "clients": clients,
            "note": ("each hospital's evaluation counts carry differential-privacy noise (eval-dp-noise-multiplier): "
                     "its accuracy and sample count are noised figures, without intervals") if noised_any else
                    "exact counts reported by each hospital; intervals are Wilson 95% intervals"}
