"""The run's one-line final summary: rounds, wall clock, accuracy beside the majority-class rate (with the
noised counts' interval), the largest epsilon, and where the report and figures are."""

from __future__ import annotations

from pathlib import Path


def majority_rate(entry: dict) -> float | None:
    """Largest true-class share of the evaluated rows (rows of the summed confusion matrix)."""
    counts = (entry.get("confusion") or {}).get("counts")
    if not counts:
        return None
    totals = [sum(row) for row in counts]
    return max(totals) / sum(totals) if sum(totals) else None


def noised_accuracy_interval(entry: dict) -> list[float] | None:
    """The 95% interval of a round's accuracy from noised evaluation counts (the report's), None for exact ones."""
    if not entry.get("groups_dp") or not (entry.get("confusion") or {}).get("counts"):
        return None
    from server.report.rounds_section import accuracy_interval  # scipy loads here, at the end of a run, not at start-up

    return accuracy_interval(entry["confusion"]["counts"], entry["groups_dp"])


def final_summary(run_name: str, summary: dict, history: list[dict], report: Path | None) -> str:
    """One line: rounds, wall clock, accuracy vs the majority-class rate, max epsilon, the report."""
    final, initial = summary.get("final", {}), summary.get("initial", {})
    parts = [f"FedEmo run {run_name}: {summary.get('rounds', 0)} of {summary.get('planned_rounds', '?')} rounds "
             f"in {summary['wall_clock_s']:.1f} s"]
    accuracy = final.get("accuracy")
    if accuracy is not None:
        text = f"accuracy {accuracy:.3f}"
        if initial.get("accuracy") is not None:
            text += f" (initial {initial['accuracy']:.3f})"
        last = history[-1] if history else {}
        interval = noised_accuracy_interval(last)
        if interval is not None:  # noised counts: the point alone says little, its interval says how little
            text += f" (noised counts: 95% interval {max(interval[0], 0):.3f} to {min(interval[1], 1):.3f})"
        majority = majority_rate(last)
        if majority is not None:
            majority = min(max(majority, 0.0), 1.0)
            text += f" vs majority-class rate {majority:.3f}"
            if interval is not None:
                if interval[0] <= majority:
                    text += " (at this count noise, not distinguishable from always answering the most common emotion)"
            elif accuracy <= majority:
                text += " (no better than always answering the most common emotion)"
        parts.append(text)
    privacy = summary.get("privacy") or {}
    if "max_epsilon" in privacy:
        parts.append(f"max epsilon {privacy['max_epsilon']:.2f}")
    if "central_dp" in privacy and privacy["central_dp"].get("epsilon") is not None:
        parts.append(f"client-level epsilon {privacy['central_dp']['epsilon']:.2f}")
    parts.append(f"report {report.with_suffix('.html')}" if report else "no report (see the error above)")
    if report and (report.parent / "figures").is_dir():  # figures/ and rounds.csv for a paper
        parts.append(f"figures {report.parent / 'figures'}")
    return "; ".join(parts)
