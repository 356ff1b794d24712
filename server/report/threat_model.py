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
                  "central noise, clipped-count noise) and, under dp, every random draw applied to training data "
                  "(augmentation) comes from fresh OS entropy on the machine that applies it, never from the "
                  "run's seed; augmentation draws are keyed per record, so one record's presence changes no other "
                  "record's draw; generators and the floating-point Gaussian are not cryptographically hardened "
                  "(Opacus's secure mode needs torchcsprng, not installable here)",
    "split": "without a published split, each record's train/test side is a keyed hash of its stable key (its "
             "file's path, or a CSV row's label and pixels), so adding, removing or replacing one record moves no "
             "other record between the splits",
}


REPLACE_ONE_RECORD = ("replace one training record of one hospital by another (the training-set size n, the "
                      "sample rate and delta are public: the node sends them); accounted under replace-one "
                      "with dp-accounting's PLD accountant for the Poisson-subsampled Gaussian")
PARALLEL_COMPOSITION = ("the train/test split is a keyed hash of each record's stable id, so training and "
                        "evaluation compose in parallel: a record in either split is protected at the larger of "
                        "the two epsilons, a record whose replacement moves between the splits at their sum")
TIMING_SIDE_CHANNEL = {
    "channel": "the duration of a hospital's DP training round (seen by the coordinator between request and reply)",
    "reveals": "the round's samples seen (the sum of its secret Poisson batch sizes, which the node withholds): "
               "a linear fit of round duration predicted it with R^2 0.60 in the review (issue 19). Under "
               "replace-one their distribution depends on no record, but the accounting's amplification by "
               "sampling assumes they stay hidden",
    "would_remove_it": "fixed work per round: every step padded to the largest Poisson batch it allows (or a fixed "
                       "number of per-sample gradient computations per round, whatever the draws)",
    "why_not_removed": "cost: padding each step to a batch that Binomial(n, q) exceeds with probability 1e-6 "
                       "(about B + 5 sqrt(B), 104 at batch 64) is about 1.6x the expected work per step, on top of "
                       "DP-SGD's own 1.3-1.5x, and a shared machine's load would still show in the timing; stated "
                       "here instead",
}

EVALUATION_TIMING = {
    "channel": "the duration of a hospital's evaluation (seen by the coordinator between request and reply)",
    "reveals": "roughly the size of its test split (evaluation work grows with it), which the noised counts' "
               "add/remove accounting treats as not released exactly; not measured (one record is a small part "
               "of a split's evaluation time)",
    "would_remove_it": "evaluating a fixed, public number of rows per round (padding the test split)",
    "why_not_removed": "not measured, so not yet weighed against its cost; stated here instead",
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
            "mechanism": "sample-level DP-SGD (Poisson sampling, per-sample clipping, Gaussian noise)",
            "protects": "each training record of each hospital",
            "adjacency": REPLACE_ONE_RECORD,
            "against": "the coordinator and everyone who sees any model a hospital sends or the global model",
            "epsilon": "training epsilon, per hospital, in its ledger, composed over every round and every run on "
                       "that data; the budget (dp-epsilon) is enforced on it",
        })
        if eval_noise > 0:
            mechanisms.append({
                "mechanism": f"Gaussian noise on evaluation counts (multiplier at least {eval_noise:g}: each hospital "
                             "raises it once per run to fit its budget over the run's evaluations; each round's "
                             "multipliers are in metrics.jsonl)",
                "protects": "each test record of each hospital",
                "adjacency": "add or remove one test record (one cell of each attribute's histogram moves by 1; "
                             "the noised counts are summed unclipped, clipped only for display)",
                "against": "the coordinator and every reader of the report",
                "epsilon": "evaluation-count epsilon, per hospital, its own entry in the ledger, separate from "
                           "training: " + PARALLEL_COMPOSITION,
            })
    if central != "off":
        mechanisms.append({
            "mechanism": f"client-level central DP ({central} clipping, Gaussian noise on the average)",
            "protects": "each hospital's whole contribution",
            "adjacency": "replace one hospital's whole data by any other's (population and nodes per round "
                         "fixed and public); accounted with sensitivity 2C/m, no amplification by sampling; an "
                         "update the screen rejects counts as a zero update over the fixed m, so whether a round "
                         "is released does not depend on one hospital's update",
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
        "side_channels": ([TIMING_SIDE_CHANNEL] + ([EVALUATION_TIMING] if eval_noise > 0 else [])) if dp else [],
        "released_in_plain": released_in_plain(dp, eval_noise, central, secagg),
        "private": bool(mechanisms and (dp or central != "off")),
    }


def released_in_plain(dp: bool, eval_noise: float, central: str, secagg: bool) -> list[dict[str, str]]:
    """Values that reach the coordinator with no DP mechanism over them, and why each is acceptable (or not)."""
    plain = [
        {"value": "each hospital's training-set size (num-examples; dp-delta = 1/(10 n) and the sample rate "
                   "reveal it too)",
         "why": "public: DP-SGD is accounted under replace-one adjacency, whose neighbouring datasets have the "
                "same size; it says how many, not who or what"},
        {"value": "consent figures: the hash of each hospital's consent manifest, the records it trained on (the "
                   "training-set size again) and left out (refused, not named, withdrawn), withdrawals since its "
                   "last run, how many of its runs trained on records withdrawn since and whether this run is "
                   "one (never record ids or run names)",
         "why": "treated like the training-set size: public metadata about how many, never who or what; none "
                "changes when one training record is replaced or one test record added or removed, so no epsilon "
                "covers them and none needs to (docs/privacy.md)"},
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
