"""The one-run empirical privacy audit (simulations/audit/, docs/privacy.md "Empirical audit").

A research run only: canaries are synthetic records or synthetic nodes inside a simulation, never a
hospital's data or ledger, so an audit needs a simulated federation (a data-dir) and the mechanism it
audits: ``sample`` audits DP-SGD's records (or a run without DP, to show the audit has teeth), ``client``
audits client-level central DP's nodes (fixed clipping: each canary node sends its direction at the
clipping norm; without central DP at ``audit-canary-norm``, or by default the median norm of the hospitals' own
updates that round, so that the canaries are as long as an honest node's update and not drowned by it).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

AUDIT_MODES = ("off", "sample", "client")


@dataclass(frozen=True)
class AuditSettings:
    audit: str
    audit_canaries: int
    audit_guesses: int
    audit_significance: float
    audit_canary_norm: float

    def check(self) -> None:
        need(self, self.audit in AUDIT_MODES, "audit", f"choose one of {', '.join(AUDIT_MODES)}")
        if self.audit == "off":
            return
        need(self, self.audit_canaries >= 10, "audit-canaries", "an audit needs at least 10 canaries")
        need(self, 0 <= self.audit_guesses <= self.audit_canaries, "audit-guesses",
             "must be 0 (the best of a fixed grid, Bonferroni-corrected) or a pre-registered count <= audit-canaries")
        need(self, 0 < self.audit_significance < 1, "audit-significance", "must be in (0, 1)")
        need(self, bool(self.data_dir), "audit",
             "an audit is a research run on a simulated federation (a run-config data-dir): canaries never "
             "reach a real hospital's data or ledger")
        need(self, not self.secure_aggregation, "audit", "not with secure-aggregation (audits plain FedAvg rounds)")
        need(self, not self.state_dir, "audit",
             "an audit spends into its run's own fresh ledgers (leave state-dir empty): canaries never reach a "
             "ledger that other runs compose")
        need(self, not self.resume, "audit", "an audit run cannot be resumed (its canaries' coins belong to one run)")
        need(self, not self.vectorised_clients, "audit",  # type: ignore[attr-defined]  # SimulationSettings' key
             "not with vectorised-clients = true: an audit needs each node's own training loop (sample: its "
             "gradient canaries ride on every optimizer step; client: honest update norms measured by the real "
             "node), which the batched step bypasses; set vectorised-clients = false")
        need(self, self.audit_canary_norm >= 0, "audit-canary-norm",
             "must be >= 0 (0: the clipping norm under central DP, else the median honest update norm)")
        if self.audit == "client":
            need(self, self.central_dp == "off" or self.audit_canary_norm in (0, self.central_dp_clipping_norm),
                 "audit-canary-norm", "under central DP a canary node sends at central-dp-clipping-norm (the "
                 "replace-one-node adjacency the claim covers): leave it 0")
            need(self, not self.dp, "audit",
                 "client audits client-level central DP: set dp = false (a canary node has no records to account)")
            need(self, self.central_dp in ("off", "server-fixed", "client-fixed"), "audit",
                 "client audits fixed clipping (central-dp off, server-fixed or client-fixed): canary nodes send "
                 "their direction at central-dp-clipping-norm")
            need(self, self.fraction_train == 1.0, "audit",
                 "client needs fraction-train = 1.0: every canary node must take part in every round")
        if self.audit == "sample":
            need(self, self.central_dp == "off", "audit",
                 "sample audits DP-SGD (dp = true, or no DP at all); audit central-dp with audit = client")
