"""Fairness: the per-group report's thresholds, noised evaluation counts, and reweighting."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

REWEIGHT_ATTRIBUTES = ("sex", "age", "race", "ethnicity")  # demographic attributes a run may reweight by
MAX_REWEIGHT_POWER = 8.0  # beyond it nearly all the weight sits on the rarest group's few samples


@dataclass(frozen=True)
class FairnessSettings:
    fairness_min_group_size: int
    fairness_gap_threshold: float
    eval_dp_noise_multiplier: float
    fairness_reweight: str
    fairness_reweight_power: float

    def check(self) -> None:
        need(self, self.fairness_min_group_size >= 1, "fairness-min-group-size", "must be >= 1")
        need(self, self.fairness_gap_threshold >= 0, "fairness-gap-threshold", "must be >= 0")
        need(self, self.eval_dp_noise_multiplier == 0 or self.eval_dp_noise_multiplier >= 0.1,
             "eval-dp-noise-multiplier", "must be 0 (off) or >= 0.1")
        need(self, self.fairness_reweight in ("", *REWEIGHT_ATTRIBUTES), "fairness-reweight",
             f"choose \"\" (off) or one of {', '.join(REWEIGHT_ATTRIBUTES)}")
        need(self, 1.0 <= self.fairness_reweight_power <= MAX_REWEIGHT_POWER, "fairness-reweight-power",
             f"must be between 1 (balanced groups) and {MAX_REWEIGHT_POWER:g}")
        need(self, bool(self.fairness_reweight) or self.fairness_reweight_power == 1.0, "fairness-reweight-power",
             "applies to fairness-reweight's weights: set fairness-reweight too, or leave the power at 1")
