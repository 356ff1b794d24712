"""Sample-level DP-SGD on each node, and the node's own records of what it spent and sent."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from shared_models.settings.checks import need


@dataclass(frozen=True)
class DPSettings:
    dp: bool
    dp_epsilon: float
    dp_delta: float
    dp_max_grad_norm: float
    dp_max_noise_multiplier: float
    dp_accountant: str
    dp_secure_mode: bool
    state_dir: str
    node_sent_log: bool  # simulated nodes also write the outgoing-message audit (client/tools/outgoing_audit.py)

    def check(self) -> None:
        need(self, self.dp_epsilon > 0, "dp-epsilon", "must be > 0")
        need(self, self.dp_delta == 0 or 0 < self.dp_delta < 1, "dp-delta",
             "must be 0 (1/(10 n) for a node of n training records) or in (0, 1), and each node refuses one of "
             "1/n or more: delta is the probability that the epsilon guarantee fails outright, so it must be well "
             "below 1/n, or a mechanism that releases one whole record at random would satisfy it")
        need(self, self.dp_max_grad_norm > 0, "dp-max-grad-norm", "must be > 0")
        need(self, self.dp_max_noise_multiplier > 0.05, "dp-max-noise-multiplier", "must be > 0.05")
        need(self, self.dp_accountant == "pld", "dp-accountant",
             "choose pld: a DP node sends its training-set size, so training is accounted under replace-one, which "
             "only dp-accounting's PLD computes for Poisson-sampled DP-SGD (Opacus's prv and rdp account add/remove "
             "one record; ledgers written with them still load, and their events are recomputed under replace-one)")
        need(self, not (self.dp and self.feature_normalisation == "federated"), "feature-normalisation",
             "federated normalisation sends each node's un-noised per-band audio sums, which the DP budget does "
             "not cover; use auto or fixed with dp = true")
        need(self, not (self.dp and self.fairness_reweight), "fairness-reweight",
             "not with dp = true: each weight comes from the node's private group counts, so removing one record "
             "changes every other record's weight and DP-SGD's per-sample sensitivity no longer holds")
        need(self, not self.dp_secure_mode or secure_mode_available(), "dp-secure-mode",
             "Opacus's secure mode needs torchcsprng, which is not installed (no build exists for this torch); "
             "set it to false: the Poisson masks and the noise are then drawn from generators seeded from the "
             "OS's CSPRNG, which the coordinator cannot know (docs/privacy.md)")


def secure_mode_available() -> bool:
    """Whether Opacus's secure_mode can run here (it imports torchcsprng)."""
    return importlib.util.find_spec("torchcsprng") is not None
