"""What each privacy figure of a run means: mechanism, data covered, adjacency, who is trusted, what is plain.

The report carries this beside the numbers, so an auditor reads, for every
epsilon, which records it protects, against whom, under which notion of
neighbouring datasets, and which values left the nodes without any
protection. It is built from the run config alone (the same text as
docs/privacy.md's threat model), so it states what the code enforces, not
what a run happened to do.
"""

from __future__ import annotations

from typing import Any

THREAT_MODEL = {
    "coordinator": "honest-but-curious: runs the protocol as written, but may study everything it receives, "
                   "its logs and the run config (including seed) to learn about any patient or hospital",
    "hospitals": "each hospital sees only the global models it receives; other hospitals may collude with "
                 "the coordinator",
    "network": "TLS with node authentication in deployment (docs/deployment.md); simulations run in one process",
    "randomness": "every random draw of a DP mechanism (Poisson batch masks, gradient noise, count noise, "
                  "central noise, clipped-count noise) comes from generators seeded with fresh OS entropy on "
                  "the machine that applies it, never from the run's seed; generators and the floating-point "
                  "Gaussian are not cryptographically hardened (Opacus's secure mode needs torchcsprng, not "
                  "installable here)",
}


def guarantees(run_config: dict[str, Any]) -> dict[str, Any]:
    """The report's "guarantees" section: the threat model and one entry per privacy mechanism of the run."""
    dp = bool(run_config.get("dp", False))
    eval_noise = float(run_config.get("eval-dp-noise-multiplier", 0.0) or 0.0)
    central = str(run_config.get("central-dp", "off"))
    secagg = bool(run_config.get("secure-aggregation", False))
    mechanisms = []
    if dp:
        mechanisms.append({
            "mechanism": "sample-level DP-SGD (Opacus, Poisson sampling)",
            "protects": "each training record of each hospital",
            "adjacency": "add or remove one training record of one hospital (the training-set size is public)",
            "against": "the coordinator and everyone who sees any model a hospital sends or the global model",
            "epsilon": "per hospital, in its ledger, composed over every round and every run on that data",
        })
        if eval_noise > 0:
            mechanisms.append({
                "mechanism": f"Gaussian noise (multiplier {eval_noise:g}) on evaluation counts",
                "protects": "each test record of each hospital",
                "adjacency": "add or remove one test record (one cell of each attribute's histogram moves by 1)",
                "against": "the coordinator and every reader of the report",
                "epsilon": "per hospital, composed in the same ledger as training (conservative)",
            })
    if central != "off":
        mechanisms.append({
            "mechanism": f"client-level central DP ({central} clipping, Gaussian noise on the average)",
            "protects": "each hospital's whole contribution",
            "adjacency": "replace one hospital's whole data by any other's (population and nodes per round "
                         "fixed and public); accounted with sensitivity 2C/m, no amplification by sampling",
            "against": "everyone who sees the global models; NOT the coordinator, which sees each update "
                       "before noise",
            "epsilon": "per run, composed over every released average",
        })
    if secagg:
        mechanisms.append({
            "mechanism": "SecAgg+ (Flower)",
            "protects": "each hospital's individual update (cryptographic, not differential privacy)",
            "adjacency": "none: hides individual updates, not their sum",
            "against": "the coordinator, unless enough nodes collude with it to pass the reconstruction threshold",
            "epsilon": "none (combine with dp = true for a differential-privacy guarantee)",
        })
    return {
        "threat_model": THREAT_MODEL,
        "mechanisms": mechanisms,
        "released_in_plain": released_in_plain(dp, eval_noise, central, secagg),
        "private": bool(mechanisms and (dp or central != "off")),
    }


def released_in_plain(dp: bool, eval_noise: float, central: str, secagg: bool) -> list[dict[str, str]]:
    """Values that reach the coordinator with no DP mechanism over them, and why each is acceptable (or not)."""
    plain = [
        {"value": "each hospital's training-set size (num-examples; sets DP-SGD's sample rate)",
         "why": "treated as public, as Opacus's sample rate is; it says how many, not who or what"},
        {"value": "failure and decline reasons (error replies)",
         "why": "name files, budgets and configuration problems, never record contents"},
    ]
    if dp and eval_noise <= 0:
        plain.append({"value": "exact evaluation counts (confusion matrices overall and per group, loss sum, "
                               "valence/arousal sums)",
                      "why": "NOT protected: test records are covered by no epsilon in this run; set "
                             "eval-dp-noise-multiplier > 0 to noise and account them"})
    if not dp:
        plain.append({"value": "model updates, training loss, sample counts and exact evaluation counts",
                      "why": "sample-level DP is off: no record-level guarantee"
                             + (" (client-level DP covers the released global models only)" if central != "off"
                                else "")})
    if secagg and not dp:
        plain.append({"value": "per-node metrics beside the masked update",
                      "why": "as in Flower's SecAgg+ mod"})
    return plain
