"""The one rule every signed between-group difference is read by (docs/fairness.md).

Kept apart from server/report/fairness.py (which loads Fairlearn, scikit-learn
and SciPy, seconds of imports) because the page code and ``fedemo verify``
need only these few lines: threshold t = ``fairness-gap-threshold``; an
interval entirely beyond +-t is a difference above the threshold (the only
thing that flags); else one wider than ``INCONCLUSIVE_WIDTH_FACTOR`` x t is
"too few to conclude" (it could neither show a difference above t nor rule
one out); else it is a difference (excludes 0) or no clear difference.
"""

from __future__ import annotations

INCONCLUSIVE_WIDTH_FACTOR = 2.0  # an interval wider than this x the gap threshold is "too few to conclude"
VERDICTS = {  # difference_verdict's values, in plain words for the page
    "above_threshold": "a difference larger than the threshold",
    "too_few_to_conclude": "too few to conclude",
    "difference": "a difference, below the threshold or of uncertain size",
    "no_clear_difference": "no clear difference (the interval includes 0)",
}


def difference_verdict(ci: list[float] | None, threshold: float) -> str | None:
    """A key of ``VERDICTS`` for a signed difference's interval; None without an interval."""
    if ci is None:
        return None
    low, high = ci
    if low > threshold or high < -threshold:
        return "above_threshold"
    if high - low > INCONCLUSIVE_WIDTH_FACTOR * threshold:
        return "too_few_to_conclude"
    if low > 0 or high < 0:
        return "difference"
    return "no_clear_difference"


def conclusive(ci: list[float] | None, threshold: float) -> bool | None:
    """Whether an interval is narrow enough to read (width at most ``INCONCLUSIVE_WIDTH_FACTOR`` x threshold)."""
    return None if ci is None else bool(ci[1] - ci[0] <= INCONCLUSIVE_WIDTH_FACTOR * threshold)
