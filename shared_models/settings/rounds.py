"""How the rounds go: how many, which share of nodes, deadlines, the divergence guard, resuming."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need


@dataclass(frozen=True)
class RoundSettings:
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_available_nodes: int
    min_trained_nodes: int
    round_timeout: float  # the round deadline: server/rounds/round_loop.py
    divergence_rounds: int  # the divergence guard: server/rounds/divergence_guard.py
    resume: str  # a run folder to continue from its last checkpoint (server/record/checkpoint.py)

    def check(self) -> None:
        need(self, self.num_server_rounds >= 1, "num-server-rounds", "must be >= 1")
        need(self, 0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]")
        need(self, 0 < self.fraction_evaluate <= 1, "fraction-evaluate", "must be in (0, 1]")
        need(self, self.min_available_nodes >= 1, "min-available-nodes", "must be >= 1")
        # a simulation (data-dir set) starts num-supernodes nodes; deployed hospitals are counted as they connect
        need(self, not self.data_dir or self.min_available_nodes <= self.num_supernodes, "min-available-nodes",
             f"more than the {self.num_supernodes} simulated nodes (num-supernodes); the run would never start")
        need(self, self.divergence_rounds >= 0, "divergence-rounds", "must be >= 0 (0: no divergence guard)")
        need(self, self.round_timeout == 0 or self.round_timeout >= 1, "round-timeout",
             "must be 0 (sized from the first round) or >= 1 second")
        need(self, self.min_trained_nodes >= 1, "min-trained-nodes", "must be >= 1")
        need(self, not self.resume or not self.secure_aggregation, "resume",
             "not with secure-aggregation: its state (SecAgg+ rounds) is not checkpointed")
