"""The ledger's PLD epsilon (shared_models/ledger_accounting.py) is dp-accounting's ``PLDAccountant`` figure.

``pld_epsilon`` keeps each subsampled step's PLD instead of rebuilding it through the accountant on every
call; these checks hold it to the accountant's own figure, exactly, for the event histories a ledger holds.
"""

from __future__ import annotations

import math

import pytest
from dp_accounting import NeighboringRelation, dp_event, pld

from shared_models.ledger_accounting import ADD_REMOVE, PLD_DISCRETIZATION, REPLACE_ONE, pld_epsilon


def _accountant(mechanisms, delta: float, adjacency: str) -> float:
    relation = NeighboringRelation.REPLACE_ONE if adjacency == REPLACE_ONE else NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = pld.PLDAccountant(relation, value_discretization_interval=PLD_DISCRETIZATION)
    for sigma, q, steps in mechanisms:
        gaussian = dp_event.GaussianDpEvent(float(sigma))
        step = gaussian if q >= 1.0 else dp_event.PoissonSampledDpEvent(float(q), gaussian)
        acc.compose(dp_event.SelfComposedDpEvent(step, int(steps)))
    return float(acc.get_epsilon(delta))


HISTORIES = [
    ((1.1, 0.13, 7),),  # one round of a face50_dp node
    ((1.1, 0.13, 175),),  # its whole run
    ((0.9, 0.05, 40), (1.4, 0.2, 12)),  # two runs on one dataset
    ((1.0, 1.0, 5),),  # evaluation counts: plain Gaussians
    ((2.0, 1.0, 3), (0.8, 0.1, 30), (0.8, 0.1, 30)),  # mixed, a repeated mechanism
    ((3.5, 0.01, 2000),),  # strong noise, many steps
]


@pytest.mark.parametrize("adjacency", [REPLACE_ONE, ADD_REMOVE])
@pytest.mark.parametrize("history", HISTORIES)
def test_the_ledgers_epsilon_is_the_pld_accountants_figure_exactly(history, adjacency):
    expected = _accountant(history, 1e-5, adjacency)
    assert pld_epsilon(history, 1e-5, adjacency) == expected
    assert pld_epsilon(history, 1e-5, adjacency) == expected  # again, from the kept step: unchanged by use


def test_a_kept_step_serves_every_round_of_a_growing_history():
    for rounds in (1, 2, 5, 25):
        history = ((1.2, 0.16, 7 * rounds), (1.0, 1.0, rounds))
        assert pld_epsilon(history, 1e-6, REPLACE_ONE) == _accountant(history, 1e-6, REPLACE_ONE)


def test_no_noise_is_infinite_epsilon_and_an_unsampled_step_spends_nothing():
    assert pld_epsilon(((0.0, 0.1, 5),), 1e-5, REPLACE_ONE) == math.inf == _accountant(((0.0, 0.1, 5),), 1e-5,
                                                                                          REPLACE_ONE)
    assert pld_epsilon(((1.0, 0.0, 5), (1.0, 0.1, 5)), 1e-5, ADD_REMOVE) == _accountant(((1.0, 0.1, 5),), 1e-5,
                                                                                          ADD_REMOVE)
