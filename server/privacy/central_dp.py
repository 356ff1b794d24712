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
``z k / (2 m)``, ``k`` the number of update slots the mean divides by (``m``
unless more nodes were sent the round's instructions). Each release is
composed with dp-accounting's RDP accountant at that multiplier; no
amplification by sampling is claimed (Flower samples a fixed number of nodes
with the run's ``seed``, which is public). Flower's own accountant is not
used: it accounts each release at ``z``, which holds only for zero-out
adjacency.

**Every sampled node fills a slot; nothing else decides the release.** Which
replies are usable can depend on one hospital's data: an update over
``update-max-norm``, NaN from a diverged training, a node that crashed on
one of its records or timed out on a large set. Had such a reply simply been
dropped, the mean of the others would cost more epsilon (fewer terms, same
noise), the budget would refuse the round, and the unchanged global model
would tell every reader that one hospital's update was unusable (measured:
norm 4.5 released, 6.0 not). So :class:`_Accounted` averages a fixed
``k = max(m, nodes sent the round's instructions)`` slots: each usable reply
fills one with equal weight (the ``update-weight`` a node sends is not
trusted), and every sampled node without a usable update (screened out by
server/aggregation/update_checks.py for any reason, failed, or silent) fills its slot
with a *zero update* (the global model sent back). A zero update is one of
the clipped updates the ``2C/m`` bound already covers, so the release, its
noise (``z C / m``), its account (``z k / 2m``) and the adaptive clipped
fraction (over ``k``) never depend on which replies were usable; whether a
round is released depends only on the count of earlier releases. Rejections
that are not data-dependent (a reply malformed by structure) are handled the
same way: the coordinator cannot tell them apart from data-dependent ones.

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
have an unbounded influence): every node sends ``update-weight`` 1, and the
slots FedAvg averages carry weight 1 whatever a node sent (a node claiming a
tiny weight would otherwise enlarge everyone else's influence).

**Flower 1.41, corrected.** (1) Its adaptive wrappers move the clipping norm
before adding the round's noise (too little noise when it shrinks); here the
noise follows the norm the round's updates were clipped to. (2) Its server-side
clipping divides by the update's norm (``clip_inputs_inplace``,
``adaptive_clip_inputs_inplace`` in ``flwr.supercore.differential_privacy``):
an update equal to the global model raised ``ZeroDivisionError`` and ended the
federation. Our server-side wrappers override ``aggregate_train`` with Flower's
steps and :func:`clip_update`, which leaves a zero update as it is.

**Resume.** The account is checkpointed each round (:meth:`CentralDP.state`)
and each release is journaled to ``central_dp_releases.json`` as it is made,
before the model reaches any node: a resumed run counts every release, the one
made in the round the coordinator died in included (its rerun counts again);
the adaptive clipping norm continues from the checkpointed round.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.supercore.differential_privacy import KEY_NORM_BIT, get_norm

from server.record.checkpoint import CheckpointError
from shared_models.atomic_files import atomic_write_json
from shared_models.messages import ARRAYS, METRICS
from shared_models.settings.run_settings import ConfigError, RunSettings

ADJACENCY = "replace one hospital's whole data (population and sampled nodes per round fixed and public)"
ACCOUNTING = ("rdp (dp-accounting), client-level replace-one-hospital: each release a Gaussian mechanism with "
              "multiplier z x slots / (2 x sampled), every sampled node a slot (a zero update when its reply was "
              "rejected or missing), no sampling amplification")
RELEASES_FILE = "central_dp_releases.json"  # every release, written as it is made (the resume reads it)


def clip_update(new: list[np.ndarray], old: list[np.ndarray], clipping_norm: float) -> tuple[list[np.ndarray], bool]:
    """Flower's FlatClip (``old + update * min(1, C / |update|)``) and whether it clipped; norm 0: ``new`` as is."""
    update = [np.subtract(n, o) for n, o in zip(new, old, strict=True)]
    norm = get_norm(update)
    if not norm > clipping_norm:  # also norm 0: nothing to scale
        return [np.asarray(n) for n in new], False
    scale = clipping_norm / norm
    return [np.asarray(o + u * scale).astype(np.asarray(n).dtype, copy=False)
            for n, o, u in zip(new, old, update, strict=True)], True


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
    """Releases the mean of a fixed number of update slots and counts it in ``self.account`` (set by
    ``wrap_strategy``) at its effective multiplier; a sampled node without a usable update is a zero update."""

    account: "CentralDP"
    norm_bit_required = False  # client-side adaptive clipping: each slot reports whether its update was clipped
    sent_this_round = 0  # nodes sent this round's training instructions (configure_train)

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.current_arrays, self.sent_this_round = arrays, len(messages)  # zero updates are this model
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        clip_used = float(self.clipping_norm)  # adaptive: the step inside moves it for the next round
        self.release_clipping_norm = clip_used  # the noise is scaled by it (_SecretNoise)
        slots = release_slots(replies, self.account.num_sampled, self.sent_this_round)
        if not self.account.release_fits(slots):  # data-independent: only earlier releases (a resumed rerun) count
            log(WARNING, "Central DP: round %d not released: one more release would pass central-dp-epsilon %g "
                "after %d releases; the global model stays as it was", server_round, self.account.budget,
                len(self.account.multipliers))
            return None, None
        inputs = fill_slots(replies, slots, self.current_arrays, self.strategy.weighted_by_key,
                            self.norm_bit_required)
        arrays, metrics = super().aggregate_train(server_round, inputs)
        if arrays is None:  # every slot holds an update: Flower's FedAvg always averages them
            raise RuntimeError(f"central DP: round {server_round}'s {slots} update slots gave no average")
        self.account.count_release(slots, clip_used, server_round)  # noise added, average released: one mechanism
        return arrays, metrics


def release_slots(replies: list, num_sampled: int, sent: int) -> int:
    """How many updates a release averages: the planned sample ``m``, or more when more nodes were sent
    instructions (more slots only lower the sensitivity ``2C/slots`` under the same noise). Never the number
    of usable replies alone, which one hospital's data can change."""
    usable = sum(1 for r in replies if not r.has_error())
    return max(num_sampled, sent, usable)


def _slot_message(content: RecordDict, metadata: Metadata | None = None) -> Message:
    """A Message only the aggregation reads (never sent); a zero update has no sender."""
    metadata = metadata or Metadata(run_id=0, message_id="", src_node_id=0, dst_node_id=0, reply_to_message_id="",
                                    group_id="", created_at=0.0, ttl=0.0, message_type=MessageType.TRAIN)
    return Message(content=content, metadata=metadata)


def fill_slots(replies: list, slots: int, current: ArrayRecord, weight_key: str,
               norm_bit_required: bool = False) -> list[Message]:
    """The aggregation's ``slots`` inputs: each usable reply's arrays with weight 1, then zero updates.

    A reply is usable when it has no error and one ArrayRecord (screening, server/aggregation/update_checks.py, already
    removed the others); under client-side adaptive clipping it must also say whether its update was clipped.
    A zero update is ``current`` (the global model) with weight 1, not clipped. The inputs are new Messages:
    the replies themselves (already in the round record) are not changed; server-side clipping clips the inputs.
    """
    inputs = []
    for reply in replies:
        if reply.has_error() or len(reply.content.array_records) != 1:
            continue
        metrics = MetricRecord({weight_key: 1.0})
        if norm_bit_required:
            records = list(reply.content.metric_records.values())
            bit = records[0].get(KEY_NORM_BIT) if len(records) == 1 else None
            if not isinstance(bit, (bool, int, float)):
                log(WARNING, "Central DP: a reply without %s counts as a zero update", KEY_NORM_BIT)
                continue
            metrics[KEY_NORM_BIT] = int(bool(bit))
        arrays = next(iter(reply.content.array_records.values()))
        inputs.append(_slot_message(RecordDict({ARRAYS: arrays, METRICS: metrics}), reply.metadata))
    inputs = inputs[:slots]  # release_slots counted every usable reply: never more inputs than slots
    zeros = slots - len(inputs)
    for _ in range(zeros):
        metrics = MetricRecord({weight_key: 1.0})
        if norm_bit_required:
            metrics[KEY_NORM_BIT] = 0
        inputs.append(_slot_message(RecordDict({ARRAYS: current, METRICS: metrics})))
    if zeros:
        log(INFO, "Central DP: %d of %d update slots are zero updates (sampled nodes without a usable update)",
            zeros, slots)
    return inputs


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


def sampled_per_round(settings: RunSettings, population: int) -> int:
    """How many nodes Flower's FedAvg samples per round (its own formula, min_train_nodes = 1)."""
    return max(int(population * settings.fraction_train), 1)


def central_delta(settings: RunSettings, population: int) -> float:
    return settings.central_dp_delta or 1.0 / (10 * population)


def effective_multiplier(noise_multiplier: float, slots: int, sampled: int) -> float:
    """Gaussian multiplier of one release under replace-one: noise z C / m over sensitivity 2 C / slots."""
    return noise_multiplier * slots / (2.0 * sampled)


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
    release_rounds: list[int] = field(default_factory=list)  # the round of each release (a rerun round: twice)
    journal: Path | None = None  # RELEASES_FILE in the run folder; None: releases are not written down

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

    def release_fits(self, slots: int) -> bool:
        """Whether one more release over ``slots`` update slots stays within ``central-dp-epsilon`` (0: no limit).

        ``slots`` is at least the planned sample (release_slots), so with the plan checked at start
        (check_central_budget) only releases beyond the plan (a resumed run's rerun round) can fail this.
        """
        if not self.budget:
            return True
        after = self.multipliers + [effective_multiplier(self.noise_multiplier, slots, self.num_sampled)]
        return epsilon_of_releases(after, self.delta) <= self.budget

    def count_release(self, slots: int, clip_used: float, server_round: int = 0) -> None:
        """Count one release, and write it down before the released model leaves the coordinator."""
        self.clip_used = clip_used
        self.multipliers.append(effective_multiplier(self.noise_multiplier, slots, self.num_sampled))
        self.release_rounds.append(int(server_round))
        if self.journal is not None:  # atomic: a crash leaves the journal with or without this release, whole
            atomic_write_json(self.journal, {"mode": self.mode, "delta": self.delta, "releases": [
                {"round": r, "effective_noise_multiplier": m} for r, m in zip(self.release_rounds, self.multipliers)]})
        log(INFO, "Central DP: epsilon %.4f at delta %g after %d releases (replace-one-hospital)",
            epsilon_of_releases(self.multipliers, self.delta), self.delta, len(self.multipliers))

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps: the releases so far and the clipping norm the next round starts from."""
        return {"mode": self.mode, "multipliers": list(self.multipliers), "release_rounds": list(self.release_rounds),
                "clip_used": self.clip_used, "clipping_norm": float(self.strategy.clipping_norm)}

    def resume(self, state: dict[str, Any], run_dir: Path, server_round: int) -> None:
        """Continue a checkpointed account (``state`` at ``server_round``): every journaled release counts, those
        after the checkpoint included; the clipping norm is the checkpoint's. No journal, or a different one: refused.
        """
        check_resumable(self.mode, state, run_dir)
        path = Path(run_dir) / RELEASES_FILE
        try:
            releases = json.loads(path.read_text())["releases"]
            multipliers = [float(r["effective_noise_multiplier"]) for r in releases]
            rounds = [int(r["round"]) for r in releases]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path} is missing or unreadable ({err}): the client-level DP releases of "
                                  f"{run_dir} cannot be accounted; refusing to resume with a forgotten spend") from err
        kept = len(state["multipliers"])
        if multipliers[:kept] != [float(m) for m in state["multipliers"]] or rounds[:kept] != state["release_rounds"]:
            raise CheckpointError(f"{path} disagrees with the checkpoint's {kept} client-level DP releases; "
                                  "refusing to resume")
        self.multipliers, self.release_rounds, self.clip_used = multipliers, rounds, state["clip_used"]
        self.strategy.clipping_norm = float(state["clipping_norm"])
        if len(multipliers) > kept:
            log(WARNING, "Central DP: %d release(s) made after round %d, before the coordinator stopped, stay "
                "counted (rounds %s); they are run again", len(multipliers) - kept, server_round, rounds[kept:])
        log(INFO, "Central DP resumes after %d releases: epsilon %.4f at delta %g, clipping norm %.4f",
            len(multipliers), epsilon_of_releases(multipliers, self.delta), self.delta, self.strategy.clipping_norm)


def check_resumable(mode: str, state: dict[str, Any] | None, run_dir: Path) -> None:
    """Refuse a resume whose client-level DP mode is not the checkpointed one (``state``: its account, or none)."""
    if not state and mode != "off":
        raise ConfigError(f"resume: the checkpoint of {run_dir} holds no client-level DP account (its rounds ran "
                          f"without noise, central-dp = off, or by an older FedEmo): central-dp = {mode} cannot "
                          "continue it")
    if state and mode != state["mode"]:
        raise ConfigError(f"resume: {run_dir} runs with central-dp = {state['mode']}; it cannot continue with "
                          f"central-dp = {mode} (its account and clipping norm are {state['mode']}'s)")


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


def wrap_strategy(base: FedAvg, settings: RunSettings, population: int, run_dir: Path | None = None,
                  checkpoint: Any = None) -> CentralDP | None:
    """Wrap FedAvg with the configured Flower DP wrapper, or None when central DP is off.

    Refuses, before any training, a plan whose rounds cannot fit the budget. ``run_dir``: where each release
    is written down (RELEASES_FILE); ``checkpoint``: a server.record.checkpoint.Checkpoint whose account continues.
    """
    mode = settings.central_dp
    if checkpoint is not None:
        check_resumable(mode, checkpoint.central, run_dir)
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
    central = CentralDP(mode, strategy, z, delta, population, m, budget,
                        journal=Path(run_dir) / RELEASES_FILE if run_dir is not None else None)
    strategy.account = central
    if checkpoint is not None:
        central.resume(checkpoint.central, run_dir, checkpoint.server_round)
    return central
