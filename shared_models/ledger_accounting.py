"""The privacy ledger's accounting: epsilon of composed DP events under each adjacency, recomputed from the
events themselves (dp-accounting's PLD; Opacus's accountants only to re-read schema-1 events)."""

from __future__ import annotations

from functools import lru_cache


ACCOUNTANT = "pld"  # Google's dp-accounting PLDAccountant; the only accountant new events use
LEGACY_ACCOUNTANTS = ("prv", "rdp")  # Opacus's, add/remove only: in schema-1 events, read to recompute them
ACCOUNTANTS = (ACCOUNTANT, *LEGACY_ACCOUNTANTS)
REPLACE_ONE, ADD_REMOVE = "replace-one", "add-remove"
# What a ledger event released: a DP-SGD training round, or noised per-group evaluation counts
# (one Gaussian mechanism per attribute histogram, sample rate 1). Files without "kind" are training.
EVENT_KINDS = ("train", "eval-counts")
# The adjacency each kind is accounted under, and why it is the one that holds:
# - train: a DP node sends its training-set size n (num-examples; dp-delta = 1/(10 n) and the sample rate
#   reveal it too), so n is public and neighbouring training sets differ in one record's content, not in
#   their size: replace-one. One record's clipped gradient (norm <= C) is then swapped for another's,
#   which moves the clipped sum by up to 2C in the steps that sample it.
# - eval-counts: one test record sits in one cell of each attribute's histogram; the noised counts do not
#   release the test-set size exactly, so adding or removing one test record (sensitivity 1 per histogram)
#   is the relation (replacing one is a removal and an addition: at most twice the epsilon). Under a stable
#   keyed-hash split a record is in train or in test, never both, so the two epsilons compose in parallel:
#   each is checked against the budget on its own.
ADJACENCY = {"train": REPLACE_ONE, "eval-counts": ADD_REMOVE}
# PLD's privacy-loss grid. Its rounding is pessimistic (epsilon is an upper bound): at 1e-3 the figures are
# within 0.01% of the 1e-4 grid for quickstart_dp/face50_dp-like runs (epsilon 3-25) and at most ~0.6%
# above it for small epsilons (~1) after thousands of steps, at a tenth of the time (0.1 s instead of 1 s
# per figure), which calibration's bisection needs. Fixed here, so every figure recomputes exactly.
PLD_DISCRETIZATION = 1e-3


class LedgerError(RuntimeError):
    """The ledger is missing, corrupt or inconsistent; the node must not train."""


def epsilon_of(events: list[tuple[float, float, int]], delta: float, accountant: str = ACCOUNTANT,
               adjacency: str = REPLACE_ONE) -> float:
    """Epsilon of composed (noise multiplier, sample rate, steps) events under ``adjacency``.

    ``accountant`` "pld" (dp-accounting's PLD) serves both relations; the legacy Opacus names ("prv", "rdp")
    only recompute schema-1 figures, which are add/remove.
    """
    if not events:
        return 0.0
    if accountant not in ACCOUNTANTS:
        raise LedgerError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")
    if adjacency not in (REPLACE_ONE, ADD_REMOVE):
        raise LedgerError(f"unknown adjacency {adjacency!r}; choose {REPLACE_ONE} or {ADD_REMOVE}")
    if accountant in LEGACY_ACCOUNTANTS and adjacency != ADD_REMOVE:
        raise LedgerError(f"Opacus's {accountant!r} accountant accounts add/remove only; "
                          f"{adjacency} needs {ACCOUNTANT!r}")
    return _epsilon(tuple(group_mechanisms(events)), float(delta), accountant, adjacency)


@lru_cache(maxsize=4096)  # calibration's bisection and 50 alike simulated nodes ask the same figures many times
def _epsilon(mechanisms: tuple[tuple[float, float, int], ...], delta: float, accountant: str, adjacency: str) -> float:
    if accountant == ACCOUNTANT:
        return pld_epsilon(mechanisms, delta, adjacency)
    import numpy as np  # numpy and Opacus load here, where epsilon is computed, so `fedemo --help` stays quick
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = list(mechanisms)
    with np.errstate(divide="ignore"):  # PRV takes log(1 - q) = log(0) for sample rate 1 (eval counts); harmless
        return float(acc.get_epsilon(delta))


def pld_epsilon(mechanisms: tuple[tuple[float, float, int], ...], delta: float, adjacency: str) -> float:
    """dp-accounting's PLD epsilon of Poisson-subsampled Gaussian steps (noise std = multiplier x sensitivity).

    dp-accounting's convention (pld/privacy_loss_mechanism.py, AdditiveNoisePrivacyLoss) is that one record
    contributes at most ``sensitivity`` (here 1, in units of the clipping norm C, as the noise is z x C) away
    from the value without it. ADD_OR_REMOVE_ONE compares q N(1, z^2) + (1-q) N(0, z^2) with N(0, z^2);
    REPLACE_ONE compares q N(+1, z^2) + (1-q) N(0, z^2) with q N(-1, z^2) + (1-q) N(0, z^2): the same
    sampled slot holds record x in one dataset and x' in the other, each clipped to norm <= C, and the
    worst pair is x = -x' along one direction (||x - x'|| = 2C, each within C of the record-free sum), with
    the rest of the batch common to both. That pair is DP-SGD's under replace-one with per-sample clipping
    to C, so sensitivity 1 (not 2) with REPLACE_ONE is the correct call; at sample rate 1 it reduces to a
    Gaussian of sensitivity 2, as it must. A sample rate of 1 (evaluation counts) is a plain Gaussian.

    The figure is the one dp-accounting's ``PLDAccountant`` gives for these events, built as it builds it (its
    ``_maybe_compose``), with one change: a subsampled step's own PLD is kept (``_subsampled_step``). Building
    it is most of the cost, and a node asks for the same step every round with one more round of steps, so a
    50-hospital DP round no longer rebuilds 50 of them (tests/test_ledger_accounting.py: equal to the
    accountant's figure).
    """
    import math

    from dp_accounting.pld import privacy_loss_distribution as plds

    total = plds.identity(value_discretization_interval=PLD_DISCRETIZATION)
    for sigma, q, steps in mechanisms:
        if sigma <= 0:
            return math.inf  # no noise: not private (the accountant's non-DP event)
        if q <= 0 or steps <= 0:
            continue  # never sampled: spends nothing
        if q >= 1.0:  # a plain Gaussian: ``steps`` of them compose to one of std sigma / sqrt(steps)
            composed = plds.from_gaussian_mechanism(
                standard_deviation=float(sigma) / math.sqrt(int(steps)),
                value_discretization_interval=PLD_DISCRETIZATION, neighboring_relation=_relation(adjacency))
        else:
            composed = _subsampled_step(float(sigma), float(q), adjacency).self_compose(int(steps))
        total = total.compose(composed)
    return float(total.get_epsilon_for_delta(delta))


def _relation(adjacency: str):
    from dp_accounting import NeighboringRelation

    return NeighboringRelation.REPLACE_ONE if adjacency == REPLACE_ONE else NeighboringRelation.ADD_OR_REMOVE_ONE


@lru_cache(maxsize=128)  # a few hundred KB each: a worker's nodes' train and evaluation steps
def _subsampled_step(sigma: float, q: float, adjacency: str):
    """One Poisson-subsampled Gaussian step's PLD, as ``PLDAccountant`` builds it (never changed: composition
    returns new objects)."""
    from dp_accounting.pld import privacy_loss_distribution as plds

    return plds.from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=PLD_DISCRETIZATION, sampling_prob=q,
        neighboring_relation=_relation(adjacency))


def group_mechanisms(events: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """One (noise multiplier, sample rate, steps) entry per distinct mechanism, wherever it stands in the history.

    Composition does not depend on order, so identical mechanisms compose as
    one with their steps added: a run's rounds cost the accountant one entry,
    not one per round.
    """
    steps_by_mechanism: dict[tuple[float, float], int] = {}
    for sigma, q, steps in events:
        steps_by_mechanism[(sigma, q)] = steps_by_mechanism.get((sigma, q), 0) + int(steps)
    return [(sigma, q, steps) for (sigma, q), steps in steps_by_mechanism.items()]
