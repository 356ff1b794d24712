"""The DP-wrapper seam: FedEmo's subclasses of Flower's DP strategy wrappers, the one place that overrides them.

Overrides, each with a reproduction against Flower 1.41 in docs/upstream.md: secret noise (Flower draws from
numpy's global generator), zero-norm clipping (Flower divides by zero), and the adaptive clipping direction
and noise norm. ``PRIVATE_*`` and ``OVERRIDES`` list every non-public Flower name, attribute and overridden
method used here; tests/test_flower_seams.py checks each against the installed Flower.
"""

from __future__ import annotations

import math
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.supercore.differential_privacy import KEY_NORM_BIT, get_norm

__all__ = ["KEY_NORM_BIT", "WRAPPERS", "clip_update", "clipping_norm", "restore_clipping_norm"]

FIXED = "flwr.serverapp.strategy.dp_fixed_clipping"
ADAPTIVE = "flwr.serverapp.strategy.dp_adaptive_clipping"
DIFFERENTIAL_PRIVACY = "flwr.supercore.differential_privacy"
FIXED_BASE, ADAPTIVE_BASE = "DifferentialPrivacyFixedClippingBase", "DifferentialPrivacyAdaptiveBase"

# Every name imported from a module outside Flower's public API: (module, name).
PRIVATE_NAMES = [(FIXED, "validate_replies"), (DIFFERENTIAL_PRIVACY, "KEY_NORM_BIT"),
                 (DIFFERENTIAL_PRIVACY, "get_norm")]

# What we call: (module, name or Class.member, the parameters we pass).
PRIVATE_CALLS = [
    (FIXED, "validate_replies", ["replies", "num_sampled_clients", "strict"]),
    (DIFFERENTIAL_PRIVACY, "get_norm", ["input_arrays"]),
    (FIXED, f"{FIXED_BASE}._pop_pending_event", ["self", "server_round"]),
    (FIXED, f"{FIXED_BASE}._validate_uniform_weights", ["self", "replies"]),
    (FIXED, f"{FIXED_BASE}._compose_release", ["self", "event"]),
    (ADAPTIVE, f"{ADAPTIVE_BASE}._noisy_fraction", ["self", "count", "total"]),
    (ADAPTIVE, f"{ADAPTIVE_BASE}._geometric_update", ["self", "clipped_fraction"]),
]

# Flower's state we read or write: (module, Class, attribute), checked on a real instance.
PRIVATE_ATTRIBUTES = [
    *[(module, cls, attr) for module, cls in ((FIXED, "DifferentialPrivacyServerSideFixedClipping"),
                                              (FIXED, "DifferentialPrivacyClientSideFixedClipping"),
                                              (ADAPTIVE, "DifferentialPrivacyServerSideAdaptiveClipping"),
                                              (ADAPTIVE, "DifferentialPrivacyClientSideAdaptiveClipping"))
      for attr in ("strategy", "clipping_norm", "noise_multiplier", "num_sampled_clients")],
    (FIXED, "DifferentialPrivacyServerSideFixedClipping", "accountant"),
    (FIXED, "DifferentialPrivacyServerSideFixedClipping", "current_arrays"),
    (ADAPTIVE, "DifferentialPrivacyServerSideAdaptiveClipping", "current_arrays"),
    *[(ADAPTIVE, cls, attr) for cls in ("DifferentialPrivacyServerSideAdaptiveClipping",
                                        "DifferentialPrivacyClientSideAdaptiveClipping")
      for attr in ("clipped_count_stddev", "clip_norm_lr", "target_clipped_quantile")],
    ("flwr.serverapp.strategy.fedavg", "FedAvg", "weighted_by_key"),
]

# Flower's private methods we override: (module, Class.method, Flower's parameters, Flower's methods that must
# still call it, or our override is never used).
OVERRIDES = [
    (FIXED, f"{FIXED_BASE}._add_noise_to_aggregated_arrays", ["self", "aggregated_arrays"],
     ["DifferentialPrivacyClientSideFixedClipping.aggregate_train"]),
    (ADAPTIVE, f"{ADAPTIVE_BASE}._add_noise_to_aggregated_arrays", ["self", "aggregated"],
     ["DifferentialPrivacyClientSideAdaptiveClipping.aggregate_train"]),
    (ADAPTIVE, f"{ADAPTIVE_BASE}._noisy_fraction", ["self", "count", "total"],
     ["DifferentialPrivacyClientSideAdaptiveClipping._update_clip_norm_from_replies"]),
    (ADAPTIVE, f"{ADAPTIVE_BASE}._geometric_update", ["self", "clipped_fraction"],
     ["DifferentialPrivacyClientSideAdaptiveClipping._update_clip_norm_from_replies"]),
]

# Flower's public methods we replace with a copy of their 1.41 steps: (module, Class.method, sha256 of its
# source, first 16 hex digits). A Flower that changes one must be read again before these copies are trusted.
REPLICATED = [
    (FIXED, "DifferentialPrivacyServerSideFixedClipping.aggregate_train", "59e602ef32c7d7d5"),
    (ADAPTIVE, "DifferentialPrivacyServerSideAdaptiveClipping.aggregate_train", "fba06bac9d5c1f6b"),
]


def clipping_norm(strategy: Any) -> float:
    """The clipping norm a wrapped strategy clips the next round's updates to."""
    return float(strategy.clipping_norm)


def restore_clipping_norm(strategy: Any, value: float) -> None:
    """Continue an adaptive clipping norm from a checkpoint."""
    strategy.clipping_norm = float(value)


def clip_update(new: list[np.ndarray], old: list[np.ndarray], clipping_norm: float) -> tuple[list[np.ndarray], bool]:
    """Flower's FlatClip (``old + update * min(1, C / |update|)``) and whether it clipped; norm 0: ``new`` as is."""
    update = [np.subtract(n, o) for n, o in zip(new, old, strict=True)]
    norm = get_norm(update)
    if not norm > clipping_norm:  # also norm 0: nothing to scale
        return [np.asarray(n) for n in new], False
    scale = clipping_norm / norm
    return [np.asarray(o + u * scale).astype(np.asarray(n).dtype, copy=False)
            for n, o, u in zip(new, old, update, strict=True)], True


def clip_replies(replies: list, current: ArrayRecord, clipping_norm: float) -> int:
    """Clip each reply's update (from ``current``) in place with :func:`clip_update`; returns how many were clipped."""
    clipped, current_arrays = 0, current.to_numpy_ndarrays()
    for reply in replies:
        for name, record in reply.content.array_records.items():
            arrays, was_clipped = clip_update(record.to_numpy_ndarrays(), current_arrays, clipping_norm)
            clipped += was_clipped
            reply.content[name] = ArrayRecord(dict(zip(record.keys(), (Array(a) for a in arrays), strict=True)))
    log(INFO, "aggregate_train: updates clipped to norm %.4f (%d of %d)", clipping_norm, clipped, len(replies))
    return clipped


class _SecretNoise:
    """Flower's two noise draws, from the OS's entropy instead of numpy's global (seedable) generator."""

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        clip = getattr(self, "release_clipping_norm", None) or self.clipping_norm  # the round's (_Accounted sets it)
        stdv = self.noise_multiplier * clip / self.num_sampled_clients  # Flower's compute_stdv
        rng = np.random.default_rng()  # fresh OS entropy, per release
        noised = {key: Array(np.asarray(a + rng.normal(0.0, stdv, a.shape)).astype(a.dtype))
                  for key, a in zip(aggregated.keys(), aggregated.to_numpy_ndarrays(), strict=True)}
        log(INFO, "aggregate_train: central DP noise with %.4f stdev added (OS-seeded generator)", stdv)
        return ArrayRecord(noised)

    def _noisy_fraction(self, count: int, total: int) -> float:
        return float(np.random.default_rng().normal(count, self.clipped_count_stddev)) / float(total)


class _Accounted:
    """Releases the mean of the update slots ``self.account`` (a central_dp.CentralDP, set by ``wrap_strategy``)
    fills, and counts the release; ``None`` when the account refuses it."""

    account: Any
    norm_bit_required = False  # client-side adaptive clipping: each slot reports whether its update was clipped
    sent_this_round = 0  # nodes sent this round's training instructions (configure_train)

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.current_arrays, self.sent_this_round = arrays, len(messages)  # zero updates are this model
        return messages

    def aggregate_train(self, server_round, replies):
        clip_used = float(self.clipping_norm)  # adaptive: the step inside moves it for the next round
        self.release_clipping_norm = clip_used  # the noise is scaled by it (_SecretNoise)
        inputs = self.account.slot_inputs(server_round, list(replies), self.sent_this_round, self.current_arrays,
                                          self.strategy.weighted_by_key, self.norm_bit_required)
        if inputs is None:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, inputs)
        if arrays is None:  # every slot holds an update: Flower's FedAvg always averages them
            raise RuntimeError(f"central DP: round {server_round}'s {len(inputs)} update slots gave no average")
        self.account.count_release(len(inputs), clip_used, server_round)  # noise added, average released
        return arrays, metrics


class _ZeroSafeServerFixed:
    """Flower 1.41's ``DifferentialPrivacyServerSideFixedClipping.aggregate_train``, clipping safely."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        event = self._pop_pending_event(server_round)  # Flower's own accountant (unused here: None)
        if not validate_replies(replies, self.num_sampled_clients, strict=self.accountant is not None):
            return None, None
        self._validate_uniform_weights(replies)
        clip_replies(replies, self.current_arrays, self.clipping_norm)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
            self._compose_release(event)
        return arrays, metrics


class _ZeroSafeServerAdaptive:
    """Flower 1.41's ``DifferentialPrivacyServerSideAdaptiveClipping.aggregate_train``, clipping safely."""

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        if not validate_replies(replies, self.num_sampled_clients):
            return None, None
        clipped = clip_replies(replies, self.current_arrays, self.clipping_norm)
        self._geometric_update(self._noisy_fraction(clipped, len(replies)))
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
        return arrays, metrics


class _AndrewClipUpdate:
    """Andrew et al.'s geometric clipping-norm update, in place of Flower 1.41's.

    Flower 1.41 multiplies the norm by ``exp(-lr * (clipped_fraction - target))``:
    when most updates are clipped it *shrinks* the norm, which then clips even
    more, and the norm collapses towards zero (seen here: every update clipped,
    norm 0.01 -> 0.0088). The paper's rule moves the norm towards the
    ``target`` quantile of update norms: ``C *= exp(-lr * (unclipped_fraction -
    target))``, with ``target`` (central-dp-target-quantile) the fraction of
    updates meant to pass unclipped. The privacy cost is unchanged: the same
    noisy count is used, only the direction of the step differs.
    """

    def _geometric_update(self, clipped_fraction: float) -> None:
        unclipped_fraction = 1.0 - clipped_fraction
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (unclipped_fraction - self.target_clipped_quantile))


class ServerSideFixedClipping(_Accounted, _SecretNoise, _ZeroSafeServerFixed,
                              DifferentialPrivacyServerSideFixedClipping):
    pass


class ClientSideFixedClipping(_Accounted, _SecretNoise, DifferentialPrivacyClientSideFixedClipping):
    pass


class ServerSideAdaptiveClipping(_Accounted, _SecretNoise, _AndrewClipUpdate, _ZeroSafeServerAdaptive,
                                 DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class ClientSideAdaptiveClipping(_Accounted, _SecretNoise, _AndrewClipUpdate,
                                 DifferentialPrivacyClientSideAdaptiveClipping):
    norm_bit_required = True


WRAPPERS = {"server-fixed": ServerSideFixedClipping, "client-fixed": ClientSideFixedClipping,
            "server-adaptive": ServerSideAdaptiveClipping, "client-adaptive": ClientSideAdaptiveClipping}


