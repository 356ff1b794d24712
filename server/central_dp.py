"""Client-level central DP: Flower's DP strategy wrappers plus an accountant that says what they spent.

Sample-level DP-SGD (``dp = true``) protects each record inside a hospital;
this protects each *hospital's whole update*: updates are clipped to an L2
norm (on the server, or on the node by Flower's clipping mods), averaged with
equal weights, and Gaussian noise of std ``z * C / m`` is added to the average
of the ``m`` sampled updates (McMahan et al. 2018, Andrew et al. 2021).

Accounting is client-level under **replace-one-hospital** adjacency: the
population and the number ``m`` of nodes sampled per round are fixed and
public, and two neighbouring federations differ in one hospital's whole
data. Replacing one clipped update by another moves the mean of ``m``
updates by up to ``2C/m``, twice the add/remove bound, so a release with
noise std ``z C / m`` is a Gaussian mechanism with effective multiplier
``z m' / (2 m)`` (``m'`` the updates actually averaged, ``m`` when nobody
failed). Each release is composed with dp-accounting's RDP accountant at
that multiplier; no amplification by sampling is claimed (Flower samples a
fixed number of nodes with the run's ``seed``, which is public). Flower's
own accountant is not used: it accounts each release at ``z``, which holds
only for zero-out adjacency.

- adaptive clipping: Flower raises the update noise so that update and
  clipped count together are one Gaussian mechanism with multiplier ``z``
  under add/remove (``compute_adaptive_noise_params``, Andrew et al. Thm. 1);
  under replacement both sensitivities double, so the same ``z / 2``
  accounting covers them.

**Secret noise.** Flower draws this noise (and the adaptive clipped-count
noise) from numpy's global generator, which anyone holding the run config
could seed alike. The wrappers here are subclasses that override exactly
those two draws (``_add_noise_to_aggregated_arrays``, ``_noisy_fraction``)
with a fresh ``numpy.random.default_rng()`` per release, seeded from the
operating system's entropy: nothing the coordinator logs or sends
determines it.

**Trust.** Central DP trusts the coordinator: it sees every update before
noise (or, with client-side clipping, every clipped update). The guarantee
covers what is released from it, the sequence of global models, against
everyone else: other hospitals, the model's users, anyone reading it.

Equal weights are required (an update weighted by its sample count would
have an unbounded influence), so in these modes FedAvg averages by the
``update-weight`` metric every node sends as 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import dp_accounting
import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from shared_models.run_settings import ConfigError, RunSettings

ADJACENCY = "replace one hospital's whole data (population and sampled nodes per round fixed and public)"
ACCOUNTING = ("rdp (dp-accounting), client-level replace-one-hospital: each release a Gaussian mechanism with "
              "multiplier z x averaged / (2 x sampled), no sampling amplification")


class _SecretNoise:
    """Flower's two noise draws, from the OS's entropy instead of numpy's global (seedable) generator."""

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        stdv = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients  # Flower's compute_stdv
        rng = np.random.default_rng()  # fresh OS entropy, per release
        noised = {key: Array(np.asarray(a + rng.normal(0.0, stdv, a.shape)).astype(a.dtype))
                  for key, a in zip(aggregated.keys(), aggregated.to_numpy_ndarrays(), strict=True)}
        log(INFO, "aggregate_train: central DP noise with %.4f stdev added (OS-seeded generator)", stdv)
        return ArrayRecord(noised)

    def _noisy_fraction(self, count: int, total: int) -> float:
        return float(np.random.default_rng().normal(count, self.clipped_count_stddev)) / float(total)


class _Accounted:
    """Counts each released average in ``self.account`` (set by ``wrap_strategy``) at its effective multiplier."""

    account: "CentralDP"

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        clip_used = float(self.clipping_norm)  # adaptive: the step inside moves it for the next round
        averaged = sum(1 for r in replies if not r.has_error())
        if not self.account.release_fits(averaged):  # fewer nodes than planned cost more: never past the budget
            log(WARNING, "Central DP: round %d not released: averaging %d of %d sampled updates would pass "
                "central-dp-epsilon %g; the global model stays as it was", server_round, averaged,
                self.account.num_sampled, self.account.budget)
            return None, None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:  # noise was added and the average released: one Gaussian mechanism
            self.account.count_release(averaged, clip_used)
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


class ServerSideFixedClipping(_Accounted, _SecretNoise, DifferentialPrivacyServerSideFixedClipping):
    pass


class ClientSideFixedClipping(_Accounted, _SecretNoise, DifferentialPrivacyClientSideFixedClipping):
    pass


class ServerSideAdaptiveClipping(_Accounted, _SecretNoise, _AndrewClipUpdate,
                                 DifferentialPrivacyServerSideAdaptiveClipping):
    pass


class ClientSideAdaptiveClipping(_Accounted, _SecretNoise, _AndrewClipUpdate,
                                 DifferentialPrivacyClientSideAdaptiveClipping):
    pass


WRAPPERS = {"server-fixed": ServerSideFixedClipping, "client-fixed": ClientSideFixedClipping,
            "server-adaptive": ServerSideAdaptiveClipping, "client-adaptive": ClientSideAdaptiveClipping}


def sampled_per_round(settings: RunSettings, population: int) -> int:
    """How many nodes Flower's FedAvg samples per round (its own formula, min_train_nodes = 1)."""
    return max(int(population * settings.fraction_train), 1)


def central_delta(settings: RunSettings, population: int) -> float:
    return settings.central_dp_delta or 1.0 / (10 * population)


def effective_multiplier(noise_multiplier: float, averaged: int, sampled: int) -> float:
    """Gaussian multiplier of one release under replace-one: noise z C / m over sensitivity 2 C / m'."""
    return noise_multiplier * averaged / (2.0 * sampled)


def epsilon_of_releases(multipliers: list[float], delta: float) -> float:
    """Epsilon of composed unamplified Gaussian releases, by dp-accounting's RDP accountant."""
    if not multipliers:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    for z in multipliers:
        accountant.compose(dp_accounting.GaussianDpEvent(z))
    return float(accountant.get_epsilon(delta))


def epsilon_after(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` full rounds (every sampled node averaged) at noise multiplier ``z``, replace-one."""
    return epsilon_of_releases([effective_multiplier(noise_multiplier, 1, 1)] * releases, delta)


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
    multipliers: list[float] = field(default_factory=list)  # effective multiplier of each release so far
    clip_used: float | None = None  # the norm the last round's updates were clipped to

    def spent(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "epsilon": epsilon_of_releases(self.multipliers, self.delta),
            "delta": self.delta,
            "releases": len(self.multipliers),
            "noise_multiplier": self.noise_multiplier,
            "effective_noise_multipliers": list(self.multipliers),
            "clipping_norm": float(self.clip_used if self.clip_used is not None else self.strategy.clipping_norm),
            "next_clipping_norm": float(self.strategy.clipping_norm),
            "num_sampled_clients": self.num_sampled,
            "population": self.population,
            "budget": self.budget or None,
            "adjacency": ADJACENCY,
            "accounting": ACCOUNTING,
        }

    def release_fits(self, averaged: int) -> bool:
        """Whether one more release averaging ``averaged`` updates stays within ``central-dp-epsilon`` (0: no limit)."""
        if not self.budget or averaged == 0:
            return True
        after = self.multipliers + [effective_multiplier(self.noise_multiplier, averaged, self.num_sampled)]
        return epsilon_of_releases(after, self.delta) <= self.budget

    def count_release(self, averaged: int, clip_used: float) -> None:
        self.clip_used = clip_used
        self.multipliers.append(effective_multiplier(self.noise_multiplier, averaged, self.num_sampled))
        log(INFO, "Central DP: epsilon %.4f at delta %g after %d releases (replace-one-hospital)",
            epsilon_of_releases(self.multipliers, self.delta), self.delta, len(self.multipliers))


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

    wrapper = WRAPPERS[mode]
    try:
        if mode.endswith("fixed"):
            strategy = wrapper(base, z, clip, m)
        else:
            strategy = wrapper(base, z, m, initial_clipping_norm=clip,
                               target_clipped_quantile=settings.central_dp_target_quantile,
                               clip_norm_lr=settings.central_dp_clip_lr,
                               clipped_count_stddev=settings.central_dp_clipped_count_stddev or None)
    except ValueError as exc:  # e.g. the clipped-count noise cannot fit inside z
        raise ConfigError(f"central DP ({mode}): {exc} (run-config central-dp-clipped-count-stddev)") from exc
    central = CentralDP(mode, strategy, z, delta, population, m, budget)
    strategy.account = central
    return central
