"""Fairness: the per-group report's thresholds, noised evaluation counts, and reweighting."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

REWEIGHT_ATTRIBUTES = ("sex", "age", "race", "ethnicity")  # demographic attributes a run may reweight by


@dataclass(frozen=True)
class FairnessSettings:
    fairness_min_group_size: int
    fairness_gap_threshold: float
    eval_dp_noise_multiplier: float
    fairness_reweight: str

    def check(self) -> None:
        need(self, self.fairness_min_group_size >= 1, "fairness-min-group-size", "must be >= 1")
        need(self, self.fairness_gap_threshold >= 0, "fairness-gap-threshold", "must be >= 0")
        need(self, self.eval_dp_noise_multiplier == 0 or self.eval_dp_noise_multiplier >= 0.1,
             "eval-dp-noise-multiplier", "must be 0 (off) or >= 0.1")
        need(self, self.fairness_reweight in ("", *REWEIGHT_ATTRIBUTES), "fairness-reweight",
             f"choose \"\" (off) or one of {', '.join(REWEIGHT_ATTRIBUTES)}")
