"""Client-level central DP: Flower's DP strategy wrappers plus an accountant that says what they spent.

Each hospital's whole update is clipped, averaged with equal weights over a fixed k slots, and noised
(z C / m); accounting is replace-one-hospital (sensitivity 2C/m, multiplier z k / 2m, RDP, no sampling
amplification claimed). Every sampled node fills a slot (a zero update when its reply is unusable), so the
release and its account never depend on which replies were usable. The account is checkpointed and each
release journaled before the model reaches any node. The reasoning in full: docs/design_notes.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import dp_accounting
from flwr.app import ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp.strategy import FedAvg

from server.privacy.flower_dp_seam import KEY_NORM_BIT, WRAPPERS, clipping_norm, restore_clipping_norm
from server.record.checkpoint import CheckpointError
from shared_models.atomic_files import atomic_write_json
from shared_models.messages import ARRAYS, METRICS
from shared_models.settings.run_settings import ConfigError, RunSettings

ADJACENCY = "replace one hospital's whole data (population and sampled nodes per round fixed and public)"
ACCOUNTING = ("rdp (dp-accounting), client-level replace-one-hospital: each release a Gaussian mechanism with "
              "multiplier z x slots / (2 x sampled), every sampled node a slot (a zero update when its reply was "
              "rejected or missing), no sampling amplification")
RELEASES_FILE = "central_dp_releases.json"  # every release, written as it is made (the resume reads it)


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
            "clipping_norm": float(self.clip_used if self.clip_used is not None else clipping_norm(self.strategy)),
            "next_clipping_norm": clipping_norm(self.strategy),
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

    def slot_inputs(self, server_round: int, replies: list, sent: int, current: ArrayRecord, weight_key: str,
                    norm_bit_required: bool) -> list[Message] | None:
        """The round's update slots (:func:`fill_slots`), or None when one more release would pass the budget."""
        slots = release_slots(replies, self.num_sampled, sent)
        if not self.release_fits(slots):  # data-independent: only earlier releases (a resumed rerun) count
            log(WARNING, "Central DP: round %d not released: one more release would pass central-dp-epsilon %g "
                "after %d releases; the global model stays as it was", server_round, self.budget,
                len(self.multipliers))
            return None
        return fill_slots(replies, slots, current, weight_key, norm_bit_required)

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
                "clip_used": self.clip_used, "clipping_norm": clipping_norm(self.strategy)}

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
        restore_clipping_norm(self.strategy, state["clipping_norm"])
        if len(multipliers) > kept:
            log(WARNING, "Central DP: %d release(s) made after round %d, before the coordinator stopped, stay "
                "counted (rounds %s); they are run again", len(multipliers) - kept, server_round, rounds[kept:])
        log(INFO, "Central DP resumes after %d releases: epsilon %.4f at delta %g, clipping norm %.4f",
            len(multipliers), epsilon_of_releases(multipliers, self.delta), self.delta, clipping_norm(self.strategy))


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
