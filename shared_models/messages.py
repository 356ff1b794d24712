"""The message vocabulary between the coordinator and the hospital nodes, defined once for both sides.

Every record name and key that crosses the wire is named here, in the style
of ``demographic_groups.py``: the node builds its replies from these names,
the coordinator parses them with the same names, and the privacy allowlist
(what a DP node may send at all) is written in the same words.

Metric names say what they are: ``dp-epsilon-spent`` is the epsilon a node
has spent so far, where the run-config key ``dp-epsilon`` is its budget.
"""

from __future__ import annotations

from typing import Any, Mapping

from shared_models.demographic_groups import CALIBRATION_KEY_PREFIX, GROUP_KEY_PREFIX

# ---------------------------------------------------------------- record names
ARRAYS = "arrays"      # ArrayRecord: model weights (train request and reply, evaluate request)
METRICS = "metrics"    # MetricRecord: numbers and number lists
CONFIG = "config"      # ConfigRecord: coordinator -> node settings of one round
CLIENT = "client"      # ConfigRecord: node -> coordinator, who is replying

# ------------------------------------------------------- coordinator -> node (config)
SERVER_ROUND = "server-round"
DATA_DIR = "data-dir"          # simulation only: the shared dataset folder
STATE_ROOT = "state-root"      # simulation only: where simulated nodes keep their ledgers
QUERY = "query"
QUERY_FEATURE_MOMENTS = "feature-moments"

# ------------------------------------------------------------ node -> coordinator
CLIENT_ID = "client-id"            # in CLIENT
DP_ACCOUNTANT = "dp-accountant"    # in CLIENT: which accountant the node's ledger uses
DP_LEDGER_HEAD = "dp-ledger-head"  # in CLIENT: hex hash of the newest event of the node's hash-chained ledger

NUM_EXAMPLES = "num-examples"      # training (or test) set size; public under the threat model
UPDATE_WEIGHT = "update-weight"    # always 1: client-level DP averages with equal weights
SKIPPED = "skipped"                # unreadable rows the node skipped (not sent under dp)

# train reply
TRAIN_LOSS = "train-loss"          # mean local training loss (not sent under dp: unbounded sensitivity)
TRAIN_SAMPLES = "train-samples"    # samples seen, i.e. the sum of Poisson batch sizes (not sent under dp)
UPDATE_CLIPPED = "update-clipped"  # secure aggregation only: 1 when the node clipped its update to secagg-clip-norm
DP_EPSILON_SPENT = "dp-epsilon-spent"
DP_DELTA = "dp-delta"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_SAMPLE_RATE = "dp-sample-rate"
DP_STEPS = "dp-steps"
DP_STEPS_TOTAL = "dp-steps-total"
DP_MAX_GRAD_NORM = "dp-max-grad-norm"
DP_BUDGET = "dp-budget"
DP_BUDGET_REMAINING = "dp-budget-remaining"

# train reply: patients' consent (client/data/consent*.py); counts and a hash, never record ids
CONSENT_USED = "consent-used"            # consented records trained on: the training-set size (public, as num-examples)
CONSENT_EXCLUDED = "consent-excluded"    # the node's records left out: refused, not named (exclude), withdrawn
CONSENT_WITHDRAWN = "consent-withdrawn"  # of those, withdrawn (the node's state-dir)
CONSENT_WITHDRAWN_NEW = "consent-withdrawn-new"  # withdrawals recorded since the node's previous run
CONSENT_MANIFEST = "consent-sha256"      # in CLIENT: sha256 of the consent manifest applied; "" without one
CONSENT_POLICY = "consent-policy"        # in CLIENT: exclude | include, for records the manifest does not name
CONSENT_TRACKED = "consent-tracked"      # 1 when the node keeps a consent log (a state folder), else 0
CONSENT_RUNS_ON_WITHDRAWN = "consent-runs-on-withdrawn"  # the node's runs that trained on records withdrawn since
CONSENT_THIS_RUN_ON_WITHDRAWN = "consent-this-run-on-withdrawn"  # 1 when this run (an earlier part) is one of them
CONSENT_METRICS = (CONSENT_USED, CONSENT_EXCLUDED, CONSENT_WITHDRAWN, CONSENT_WITHDRAWN_NEW, CONSENT_TRACKED,
                   CONSENT_RUNS_ON_WITHDRAWN, CONSENT_THIS_RUN_ON_WITHDRAWN)
CONSENT_CLIENT_KEYS = (CONSENT_MANIFEST, CONSENT_POLICY)

# evaluate reply
LOSS_SUM = "loss-sum"
CONFUSION = "confusion"            # flattened 7x7 counts, rows = true class
VA_MOMENTS = "va-moments"          # valence/arousal sums (p, t, pp, tt, pt) per dimension
GROUP_DP_NOISE_MULTIPLIER = "grp-dp-noise-multiplier"
GROUP_DP_EPSILON_SPENT = "grp-dp-epsilon-spent"
# plus one "grp.<attribute>.<group>" key per demographic group (shared_models.demographic_groups)

# query reply (feature-moments)
MEL_SUM = "mel-sum"
MEL_SUMSQ = "mel-sumsq"
FRAMES = "frames"

# metrics.jsonl's name for each DP figure a train reply carries
DP_REPORT_FIELDS = {
    DP_EPSILON_SPENT: "epsilon", DP_DELTA: "delta", DP_NOISE_MULTIPLIER: "noise_multiplier",
    DP_SAMPLE_RATE: "sample_rate", DP_STEPS: "steps", DP_STEPS_TOTAL: "steps_total",
    DP_MAX_GRAD_NORM: "max_grad_norm", DP_BUDGET: "budget", DP_BUDGET_REMAINING: "budget_remaining",
}

# ------------------------------------------------ what a DP node may send at all
# Under dp = true a node replies with nothing but these. Each key is either
# accounted in the node's ledger (the model arrays, released by DP-SGD; the
# noised group counts), a function of the ledger's own figures (epsilon
# spent, noise multiplier, ...), or independent of the records' content (the
# node's id, its training-set size, which the threat model treats as public,
# as Opacus's sample rate does). docs/privacy.md lists each with its reason.
# Consent counts are treated like the training-set size (public under the threat model, docs/privacy.md):
# neither changes when one training record is replaced or one test record is added or removed.
DP_TRAIN_METRICS = frozenset({NUM_EXAMPLES, UPDATE_WEIGHT, *DP_REPORT_FIELDS, *CONSENT_METRICS})
DP_CLIENT_KEYS = frozenset({CLIENT_ID, DP_ACCOUNTANT, DP_LEDGER_HEAD, *CONSENT_CLIENT_KEYS})
# Evaluation under dp with noised counts: only the noised per-group counts, the overall confusion
# summed from them (post-processing) and its total; never the exact loss or valence/arousal sums.
DP_NOISED_EVAL_METRICS = frozenset({NUM_EXAMPLES, UPDATE_WEIGHT, CONFUSION, GROUP_DP_NOISE_MULTIPLIER,
                                    GROUP_DP_EPSILON_SPENT})
# Evaluation under dp without count noise: exact counts, declared unprotected in the report.
DP_EXACT_EVAL_METRICS = frozenset({NUM_EXAMPLES, UPDATE_WEIGHT, CONFUSION, LOSS_SUM, VA_MOMENTS})


def is_group_key(key: str) -> bool:
    """A per-group evaluation key: a group's confusion ("grp.") or its calibration bins ("cal."), noised alike."""
    return key.startswith((GROUP_KEY_PREFIX, CALIBRATION_KEY_PREFIX))


def dp_allowed_metrics(message_type: str, *, eval_counts_noised: bool) -> frozenset[str] | None:
    """The metric keys a DP node may send in a reply to ``message_type``; None: that reply is refused whole.

    Group keys (``grp.*``) are allowed in evaluation replies besides these.
    A query (the audio feature sums) is never answered under dp: the sums are
    not noised.
    """
    if message_type == "train":
        return DP_TRAIN_METRICS
    if message_type == "evaluate":
        return DP_NOISED_EVAL_METRICS if eval_counts_noised else DP_EXACT_EVAL_METRICS
    return None


def dp_report(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.jsonl's "dp" entry (epsilon, delta, ...) from a train reply's metrics; {} when DP was off."""
    return {name: metrics[key] for key, name in DP_REPORT_FIELDS.items() if key in metrics}


def consent_report(metrics: Mapping[str, Any], client: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.jsonl's "consent" entry from a train reply; {} when the node sent none (an older node)."""
    if CONSENT_MANIFEST not in client:
        return {}
    return {"manifest": str(client[CONSENT_MANIFEST]), "policy": str(client.get(CONSENT_POLICY, "")),
            "tracked": bool(metrics.get(CONSENT_TRACKED, 0)),
            "used": int(metrics.get(CONSENT_USED, 0)), "excluded": int(metrics.get(CONSENT_EXCLUDED, 0)),
            "withdrawn": int(metrics.get(CONSENT_WITHDRAWN, 0)),
            "withdrawn_new": int(metrics.get(CONSENT_WITHDRAWN_NEW, 0)),
            "runs_on_withdrawn": int(metrics.get(CONSENT_RUNS_ON_WITHDRAWN, 0)),
            "this_run_on_withdrawn": bool(metrics.get(CONSENT_THIS_RUN_ON_WITHDRAWN, 0))}
