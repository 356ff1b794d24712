"""Which privacy settings combine: one check, run with the config's validation, so a run that cannot
keep its promise stops at start with the reason instead of in round 1 (or, worse, silently).

docs/privacy.md has the same rules as a table.
"""

from __future__ import annotations

from shared_models.config_error import ConfigError

# SecAgg+ over two nodes hides nothing from them: each subtracts its own update from the average it
# receives back as the next global model and reads the other's.
MIN_SECAGG_NODES = 3

_SERVER_CLIPPING = ("server-fixed", "server-adaptive")
_CLIENT_CLIPPING = ("client-fixed", "client-adaptive")


def check_supported_combination(settings) -> None:
    """Raise ConfigError naming the keys when the privacy settings do not work together."""
    if not settings.secure_aggregation:
        return
    central = getattr(settings, "central_dp", "off")
    if central in _SERVER_CLIPPING:
        raise ConfigError(
            f"run-config central-dp = {central!r} with secure-aggregation = true: server-side clipping needs "
            "each node's update in the clear, and SecAgg+ shows the coordinator only their sum. "
            "Use dp = true (DP-SGD on every node), which works with secure aggregation")
    if central in _CLIENT_CLIPPING:
        raise ConfigError(
            f"run-config central-dp = {central!r} with secure-aggregation = true is not supported: Flower 1.41 "
            "runs SecAgg+ only on its legacy workflow, where FedEmo's client-level DP wrappers and their "
            "accounting (Message-API strategies) do not run, and SecAgg+ weights updates by sample count "
            "while client-level DP needs equal weights. Use dp = true (DP-SGD on every node) with secure "
            "aggregation, or central-dp without it")
    if settings.num_supernodes < MIN_SECAGG_NODES:
        raise ConfigError(
            f"run-config num-supernodes = {settings.num_supernodes} with secure-aggregation = true: "
            f"secure aggregation needs at least {MIN_SECAGG_NODES} nodes per round (with two, each node can "
            "subtract its own update from the average and read the other's); the coordinator waits for them")
