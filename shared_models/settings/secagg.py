"""SecAgg+: the coordinator sees only the sum of the nodes' quantised updates (server/privacy/secure_aggregation.py)."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need


@dataclass(frozen=True)
class SecAggSettings:
    secure_aggregation: bool
    secagg_num_shares: float
    secagg_reconstruction_threshold: float
    secagg_clip_norm: float
    secagg_clipping_range: float
    secagg_quantization_range: int
    secagg_max_weight: float

    def check(self) -> None:
        need(self, 0 < self.secagg_num_shares <= 1, "secagg-num-shares",
             "must be in (0, 1] (a share of the sampled nodes)")
        need(self, 0 < self.secagg_reconstruction_threshold <= 1, "secagg-reconstruction-threshold",
             "must be in (0, 1] (a share of secagg-num-shares)")
        need(self, self.secagg_clip_norm > 0, "secagg-clip-norm", "must be > 0")
        need(self, self.secagg_clipping_range >= self.secagg_clip_norm, "secagg-clipping-range",
             "must be >= secagg-clip-norm, or SecAgg+ cuts off coordinates of a clipped update")
        need(self, self.secagg_max_weight >= 1, "secagg-max-weight",
             "must be >= 1 (the largest node's training samples)")
        # SecAgg+ sums every node's quantised vector modulo 2**32: the sum must not wrap around.
        need(self, 2 <= self.secagg_quantization_range < 2**32, "secagg-quantization-range", "must be in [2, 2**32)")
        need(self, not self.secure_aggregation or self.num_supernodes * self.secagg_quantization_range < 2**32,
             "secagg-quantization-range", f"times num-supernodes ({self.num_supernodes}) must stay below 2**32")
