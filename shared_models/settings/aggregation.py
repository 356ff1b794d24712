"""How updates become a model: the aggregation rule, server momentum and update screening."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

# server/aggregation/strategy.py maps each to a Flower strategy; docs/configuration.md says which privacy
# modes each allows. auto: server/aggregation/robust_aggregation.py picks one (a trimmed mean from 5 nodes)
AGGREGATIONS = ("auto", "fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class AggregationSettings:
    server_momentum: float
    aggregation: str
    robust_malicious_nodes: int
    robust_trim_beta: float
    update_norm_ratio: float  # update screening: server/aggregation/update_checks.py
    update_max_norm: float
    update_norm_growth: float
    update_min_cosine: float
    update_weight_ratio: float

    def check(self) -> None:
        need(self, 0 <= self.server_momentum < 1, "server-momentum", "must be in [0, 1)")
        need(self, self.server_momentum == 0 or self.central_dp == "off", "server-momentum",
             "not with central-dp: the momentum would carry past rounds' un-noised averages into every release")
        need(self, self.server_momentum == 0 or not self.secure_aggregation, "server-momentum",
             "not with secure-aggregation (its rounds run plain FedAvg)")
        need(self, self.aggregation in AGGREGATIONS, "aggregation", f"choose one of {', '.join(AGGREGATIONS)}")
        need(self, self.aggregation in ("auto", "fedavg") or self.central_dp == "off", "aggregation",
             "client-level central-dp accounts FedAvg's clipped, equally weighted mean only; use fedavg")
        need(self, self.aggregation in ("auto", "fedavg") or not self.secure_aggregation, "aggregation",
             "secure-aggregation shows the coordinator only the sum of the updates; only fedavg works on a sum")
        need(self, self.aggregation in ("auto", "fedavg") or self.server_momentum == 0, "aggregation",
             "server-momentum (FedAvgM) is an average's momentum; use fedavg with it")
        need(self, self.robust_malicious_nodes >= 0, "robust-malicious-nodes", "must be >= 0")
        need(self, 0 <= self.robust_trim_beta < 0.5, "robust-trim-beta", "must be in [0, 0.5)")
        need(self, self.aggregation != "bulyan" or self.num_supernodes >= 4 * self.robust_malicious_nodes + 3,
             "aggregation", f"bulyan needs at least 4 x robust-malicious-nodes + 3 = "
             f"{4 * self.robust_malicious_nodes + 3} nodes per round (num-supernodes {self.num_supernodes})")
        need(self, self.aggregation not in ("krum", "multikrum")
             or self.num_supernodes >= 2 * self.robust_malicious_nodes + 3, "aggregation",
             f"krum needs at least 2 x robust-malicious-nodes + 3 = {2 * self.robust_malicious_nodes + 3} nodes")
        need(self, self.update_norm_ratio == 0 or self.update_norm_ratio > 1, "update-norm-ratio",
             "must be 0 (off) or > 1 (a multiple of the round's median update norm)")
        need(self, self.update_max_norm >= 0, "update-max-norm", "must be >= 0 (0: no absolute bound)")
        need(self, self.update_norm_growth == 0 or self.update_norm_growth > 1, "update-norm-growth",
             "must be 0 (off) or > 1 (a multiple of earlier rounds' median accepted update norm)")
        need(self, -1 <= self.update_min_cosine < 1, "update-min-cosine", "must be in [-1, 1) (-1: off)")
        need(self, self.update_weight_ratio == 0 or self.update_weight_ratio >= 1, "update-weight-ratio",
             "must be 0 (off) or >= 1 (a multiple of the round's lower median num-examples)")
