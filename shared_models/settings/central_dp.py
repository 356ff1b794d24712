"""Client-level differential privacy at the coordinator (server/privacy/central_dp.py)."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

CENTRAL_DP_MODES = ("off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")


@dataclass(frozen=True)
class CentralDPSettings:
    central_dp: str
    central_dp_noise_multiplier: float
    central_dp_clipping_norm: float
    central_dp_epsilon: float
    central_dp_delta: float
    central_dp_target_quantile: float
    central_dp_clip_lr: float
    central_dp_clipped_count_stddev: float

    def check(self) -> None:
        need(self, not (self.central_dp != "off" and self.feature_normalisation == "federated"),
             "feature-normalisation",
             "federated normalisation puts every node's un-noised per-band audio statistics into the released "
             "global model, which client-level DP (central-dp) does not cover; use auto or fixed with central-dp")
        need(self, self.central_dp in CENTRAL_DP_MODES, "central-dp", f"choose one of {', '.join(CENTRAL_DP_MODES)}")
        need(self, self.central_dp == "off" or self.central_dp_noise_multiplier > 0, "central-dp-noise-multiplier",
             "must be > 0 when central-dp is on (no noise, no privacy)")
        need(self, self.central_dp_clipping_norm > 0, "central-dp-clipping-norm", "must be > 0")
        need(self, self.central_dp_epsilon >= 0, "central-dp-epsilon", "must be >= 0 (0: no limit)")
        need(self, 0 <= self.central_dp_delta < 1, "central-dp-delta", "must be in [0, 1) (0: 1/(10 nodes))")
        need(self, 0 <= self.central_dp_target_quantile <= 1, "central-dp-target-quantile", "must be in [0, 1]")
        need(self, self.central_dp_clip_lr > 0, "central-dp-clip-lr", "must be > 0")
        need(self, self.central_dp_clipped_count_stddev >= 0, "central-dp-clipped-count-stddev", "must be >= 0")
        # Flower's adaptive clipping draws the update's noise and the clipped count's from one z: it needs
        # z < 2 x this std (0: Flower's default, sampled nodes / 20, checked when the nodes are known)
        need(self, not (self.central_dp.endswith("adaptive") and self.central_dp_clipped_count_stddev > 0
                        and self.central_dp_noise_multiplier >= 2 * self.central_dp_clipped_count_stddev),
             "central-dp-clipped-count-stddev",
             f"must be more than half of central-dp-noise-multiplier ({self.central_dp_noise_multiplier:g}) under "
             f"adaptive clipping, which splits that noise between the update and the clipped count")
