"""Client-level central DP: Flower's DP strategy wrappers plus an accountant that says what they spent.

Sample-level DP-SGD (``dp = true``) protects each record inside a hospital;
this protects each *hospital's whole update*: updates are clipped to an L2
norm (on the server, or on the node by Flower's clipping mods), averaged with
equal weights, and Gaussian noise of std ``z * C / m`` is added to the average
of the ``m`` sampled updates (McMahan et al. 2018, Andrew et al. 2021).

Accounting is client-level, add/remove-one-client, and claims **no
amplification by sampling** (Flower samples a fixed number of nodes, and its
accountant only certifies that case): every round that releases a noised
average costs one Gaussian mechanism with noise multiplier ``z``.

- fixed clipping: Flower 1.41's own ``RdpAccountant`` is handed to the
  wrapper, which checks the budget before each round and composes each
  release;
- adaptive clipping: Flower's wrapper has no accountant hook, so each release
  is composed here with dp-accounting's RDP accountant. The clipped-count
  noise is part of the same budget: Flower raises the update noise so that
  update and count together are one Gaussian mechanism with multiplier ``z``
  (``compute_adaptive_noise_params``, Andrew et al. Thm. 1), which is the
  ``z`` accounted here.

Equal weights are required (an update weighted by its sample count would
have an unbounded influence), so in these modes FedAvg averages by the
``update-weight`` metric every node sends as 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import dp_accounting
from flwr.common.logger import log
from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from shared_models.run_settings import ConfigError, RunSettings

ACCOUNTING = "rdp (dp-accounting), client-level add/remove-one, no sampling amplification"


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


class ServerSideAdaptiveClipping(_AndrewClipUpdate, DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class ClientSideAdaptiveClipping(_AndrewClipUpdate, DifferentialPrivacyClientSideAdaptiveClipping):
    pass


def sampled_per_round(settings: RunSettings, population: int) -> int:
    """How many nodes Flower's FedAvg samples per round (its own formula, min_train_nodes = 1)."""
    return max(int(population * settings.fraction_train), 1)


def central_delta(settings: RunSettings, population: int) -> float:
    return settings.central_dp_delta or 1.0 / (10 * population)


def epsilon_after(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` unamplified Gaussian mechanisms, by dp-accounting's RDP accountant."""
    accountant = dp_accounting.rdp.RdpAccountant()
    if releases:
        accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(delta)) if releases else 0.0


@dataclass
class CentralDP:
    """The wrapped strategy and its running privacy account (``spent()`` goes into every round's log)."""

    mode: str
    strategy: Any
    noise_multiplier: float
    delta: float
    population: int
    num_sampled: int
    budget: float
    flower_accountant: RdpAccountant | None = None
    releases: int = 0
    clip_used: float | None = None  # adaptive: the norm the last round's updates were clipped to
    _backend: Any = field(default=None, repr=False)

    def spent(self) -> dict[str, Any]:
        if self.flower_accountant is not None:
            spent = self.flower_accountant.get_privacy_spent()
            epsilon, releases = spent.epsilon, spent.num_releases
        else:
            epsilon = float(self._backend.get_epsilon(self.delta)) if self.releases else 0.0
            releases = self.releases
        return {
            "mode": self.mode,
            "epsilon": epsilon,
            "delta": self.delta,
            "releases": releases,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": float(self.clip_used if self.clip_used is not None else self.strategy.clipping_norm),
            "next_clipping_norm": float(self.strategy.clipping_norm),
            "num_sampled_clients": self.num_sampled,
            "population": self.population,
            "budget": self.budget or None,
            "accounting": ACCOUNTING,
        }

    def _count_release(self) -> None:
        self._backend.compose(dp_accounting.GaussianDpEvent(self.noise_multiplier))
        self.releases += 1
        log(INFO, "Central DP: epsilon %.4f at delta %g after %d releases",
            self._backend.get_epsilon(self.delta), self.delta, self.releases)


def check_central_budget(settings: RunSettings, population: int) -> float:
    """The run's planned client-level epsilon; a plan over ``central-dp-epsilon`` is refused before it starts."""
    z, rounds = settings.central_dp_noise_multiplier, settings.num_server_rounds
    delta = central_delta(settings, population)
    planned = epsilon_after(z, rounds, delta)
    budget = settings.central_dp_epsilon
    if budget and planned > budget:
        fits = max((r for r in range(rounds + 1) if epsilon_after(z, r, delta) <= budget), default=0)
        raise ConfigError(
            f"central DP: {rounds} rounds at central-dp-noise-multiplier {z} spend epsilon {planned:.2f} at "
            f"delta {delta:g}, over central-dp-epsilon {budget}; that noise allows {fits} rounds "
            f"(raise the noise multiplier or lower num-server-rounds)")
    return planned


def wrap_strategy(base: FedAvg, settings: RunSettings, population: int) -> CentralDP | None:
    """Wrap FedAvg with the configured Flower DP wrapper, or None when central DP is off.

    Refuses, before any training, a plan whose rounds cannot fit the budget.
    """
    mode = settings.central_dp
    if mode == "off":
        return None
    z, clip = settings.central_dp_noise_multiplier, settings.central_dp_clipping_norm
    m = sampled_per_round(settings, population)
    delta = central_delta(settings, population)
    planned = check_central_budget(settings, population)
    budget = settings.central_dp_epsilon
    log(INFO, "Central DP (%s): noise multiplier %.3f, clipping norm %.3f, %d of %d nodes per round; "
        "planned epsilon %.3f at delta %g", mode, z, clip, m, population, planned, delta)

    if mode.endswith("fixed"):
        accountant = RdpAccountant(PrivacyConfig(
            target_delta=delta, population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=budget or None,
        ))
        wrapper = (DifferentialPrivacyServerSideFixedClipping if mode == "server-fixed"
                   else DifferentialPrivacyClientSideFixedClipping)
        strategy = wrapper(base, z, clip, m, accountant=accountant)
        return CentralDP(mode, strategy, z, delta, population, m, budget, flower_accountant=accountant)

    wrapper = ServerSideAdaptiveClipping if mode == "server-adaptive" else ClientSideAdaptiveClipping
    try:
        strategy = wrapper(base, z, m, initial_clipping_norm=clip,
                           target_clipped_quantile=settings.central_dp_target_quantile,
                           clip_norm_lr=settings.central_dp_clip_lr,
                           clipped_count_stddev=settings.central_dp_clipped_count_stddev or None)
    except ValueError as exc:  # e.g. the clipped-count noise cannot fit inside z
        raise ConfigError(f"central DP ({mode}): {exc} (run-config central-dp-clipped-count-stddev)") from exc
    central = CentralDP(mode, strategy, z, delta, population, m, budget,
                        _backend=dp_accounting.rdp.RdpAccountant())
    aggregate_train = strategy.aggregate_train

    def accounted_aggregate_train(server_round, replies):
        central.clip_used = float(strategy.clipping_norm)  # the step below moves it for the next round
        arrays, metrics = aggregate_train(server_round, replies)
        if arrays is not None:  # noise was added and the average released: one Gaussian mechanism
            central._count_release()
        return arrays, metrics

    strategy.aggregate_train = accounted_aggregate_train
    return central
