"""The report's fairness-method section: which lever against DP's disparate impact a run used, and its privacy cost.

An auditor reading a DP run's group gaps needs to know whether anything was done to keep them from widening
and what it spent. The lever shipped here is a feature front end (``face_scatter_lcn``: local contrast
normalisation before the scattering transform, docs/fairness.md "DP without widening the gaps"): a fixed
transform of each sample alone, so it releases no statistic and costs no epsilon; the training epsilon and
the evaluation-count epsilon are the privacy section's, unchanged. ``fairness-reweight`` is named too (never
with DP: refused at validation). A run with neither says "none".
"""

from __future__ import annotations

from html import escape
from typing import Any

# model name -> what its fairness lever is (the cost of each is nil: a per-sample fixed transform)
FAIR_MODELS = {
    "face_scatter_lcn": "local contrast normalisation of each face before the scattering transform "
                        "(raises the low feature contrast of under-exposed, dark-skinned faces to that of the rest)",
    "face_scatter_lcn_blur": "a 1-pixel Gaussian low-pass, then local contrast normalisation, of each face before the "
                             "scattering transform (raises the signal-to-noise ratio of low-contrast faces)",
    "voice_stats_norm": "each clip's log-mel statistics standardised across the mel bands "
                        "(divides out the clip's level and spread, which differ with the speaker's sex and the recording)",
}
NO_STATISTIC = ("a fixed transform of each sample on its own: no statistic of any other record is used or "
                "released, DP-SGD's per-sample sensitivity is unchanged, and the extra epsilon is 0")


def fair_dp_report(run_config: dict[str, Any]) -> dict[str, Any]:
    """{"method", "description", "extra_statistics", "extra_epsilon", "why"} from the run's config."""
    model = str(run_config.get("model", ""))
    reweight = str(run_config.get("fairness-reweight") or "")
    front = {"method": model, "description": FAIR_MODELS[model]} if model in FAIR_MODELS else None
    if reweight:  # never under DP (refused at validation); with a fair front end, both are named
        power = float(run_config.get("fairness-reweight-power", 1.0))
        method = f"fairness-reweight={reweight}" + (f", power {power:g}" if power != 1 else "")
        description = (f"each training sample's loss weighted by (1 / its {reweight} group's share on its "
                       f"node) to the power {power:g}, mean 1")
        return {"method": f"{front['method']} + {method}" if front else method,
                "description": f"{front['description']}; {description}" if front else description,
                "extra_statistics": ["the node's group counts (exact, used only inside the node)"],
                "extra_epsilon": None, "why": "not under DP (refused at validation): no privacy claim to spend",
                "dp": bool(run_config.get("dp"))}
    if front:
        return {**front, "extra_statistics": [], "extra_epsilon": 0.0, "why": NO_STATISTIC,
                "dp": bool(run_config.get("dp"))}
    return {"method": "none", "description": "no fairness lever: plain training", "extra_statistics": [],
            "extra_epsilon": 0.0, "why": "nothing beyond training and evaluation was computed",
            "dp": bool(run_config.get("dp"))}


def fair_dp_part(run, report: dict[str, Any]) -> dict[str, Any]:
    return {"fair_dp": fair_dp_report(run.run_config)}


def fair_dp_html(report: dict[str, Any]) -> str:
    """A short paragraph under its own heading (empty for a report built before the section existed)."""
    item = report.get("fair_dp")
    if not item:
        return ""
    cost = ("none: " + item["why"]) if item.get("extra_epsilon") == 0.0 else item["why"]
    return ("<h2>Fairness method and its privacy cost</h2>"
            f"<p>Method: <strong>{escape(item['method'])}</strong> ({escape(item['description'])}). "
            f"Extra privacy cost: {escape(cost)}.</p>")
