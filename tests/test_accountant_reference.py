"""Our epsilons against the accountants' own published reference values.

Every epsilon FedEmo prints comes from one of three places: a node's ledger
(dp-accounting's PLD accountant over the recorded history: training under
replace-one, evaluation counts under add/remove; Opacus's RDP and PRV only
recompute legacy add/remove figures), the noise calibration (bisection over
the same accountant) and the client-level central
DP account (dp-accounting's RDP accountant, also inside Flower's). Each is
checked here against numbers the libraries' own test suites publish, or
against an independent accountant of another library.
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from flwr.serverapp import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant,
                            SamplingMethod)
from opacus.accountants.utils import get_noise_multiplier

from client.privacy.dp_training import calibrate_noise
from shared_models.privacy_ledger import (ADD_REMOVE, PLD_DISCRETIZATION, REPLACE_ONE, LedgerError, PrivacyLedger,
                                          epsilon_of)
from server.privacy.central_dp import epsilon_after, epsilon_of_releases

# Opacus's accountants_test.py: 90 epochs at q = 0.04, sigma = 1.5, delta = 1e-5 -> 7.32911117143 (RDP).
OPACUS_RDP = dict(sigma=1.5, q=0.04, steps=int(90 / 0.04), delta=1e-5, epsilon=7.32911117143)


def test_legacy_rdp_figures_still_recompute_to_opacus_published_value():
    """Schema-1 ledgers recorded Opacus's add/remove figures; they recompute exactly (epsilon_of, "rdp")."""
    history = [(OPACUS_RDP["sigma"], OPACUS_RDP["q"], OPACUS_RDP["steps"])]
    assert epsilon_of(history, OPACUS_RDP["delta"], "rdp", ADD_REMOVE) == pytest.approx(OPACUS_RDP["epsilon"], abs=1e-9)
    with pytest.raises(LedgerError, match="add/remove only"):
        epsilon_of(history, OPACUS_RDP["delta"], "rdp", REPLACE_ONE)


def test_ledger_training_epsilon_is_dp_accountings_replace_one_pld(tmp_path):
    # The same history recorded round by round in a ledger composes to dp-accounting's figure for the whole.
    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=100.0, delta=1e-5)
    for r in range(9):
        ledger.record(run="1", server_round=r + 1, noise_multiplier=1.5, sample_rate=0.04, steps=250,
                      max_grad_norm=1.0)
    pld = pld_privacy_accountant.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE,
                                               value_discretization_interval=PLD_DISCRETIZATION)
    pld.compose(dp_accounting.PoissonSampledDpEvent(0.04, dp_accounting.GaussianDpEvent(1.5)), 2250)
    assert ledger.spent() == pytest.approx(pld.get_epsilon(1e-5), rel=1e-9)
    assert ledger.spent() > OPACUS_RDP["epsilon"] > epsilon_of([(1.5, 0.04, 2250)], 1e-5, "prv", ADD_REMOVE)


def test_replace_one_at_sample_rate_one_is_a_gaussian_of_twice_the_sensitivity():
    """dp-accounting's sensitivity convention under REPLACE_ONE: each record within 1 (one clipping norm) of
    the record-free value, so two records differ by up to 2; without sampling that is a Gaussian of
    sensitivity 2 under add/remove, as it must be."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    ours = epsilon_of([(3.0, 1.0, 1)], 1e-5, "pld", REPLACE_ONE)
    doubled = pld_lib.from_gaussian_mechanism(3.0, sensitivity=2.0, value_discretization_interval=PLD_DISCRETIZATION)
    assert ours == pytest.approx(doubled.get_epsilon_for_delta(1e-5), rel=1e-6)


def test_ledger_rdp_agrees_with_dp_accounting_rdp():
    ours = epsilon_of([(1.5, 0.04, 2250)], 1e-5, "rdp", ADD_REMOVE)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.04, dp_accounting.GaussianDpEvent(1.5)), 2250)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-3)  # the two libraries use other order grids


@pytest.mark.parametrize("sigma,q,steps,delta", [(1.5, 0.04, 2250, 1e-5), (1.0, 0.01, 1000, 1e-5),
                                                 (0.8, 0.25, 40, 1e-3)])
def test_opacus_prv_agrees_with_our_add_remove_pld(sigma, q, steps, delta):
    # PRV (Opacus) and PLD (dp-accounting) are independent numerical accountants of the same tight bound.
    ours = epsilon_of([(sigma, q, steps)], delta, "pld", ADD_REMOVE)
    assert epsilon_of([(sigma, q, steps)], delta, "prv", ADD_REMOVE) == pytest.approx(ours, rel=0.02)
    assert ours <= epsilon_of([(sigma, q, steps)], delta, "rdp", ADD_REMOVE)  # tight accounting never worse than RDP


def test_calibrated_noise_keeps_its_promise_under_replace_one():
    ours = calibrate_noise([], 0.04, int(90 / 0.04), target_epsilon=8.0, delta=1e-5)
    assert epsilon_of([(ours, 0.04, 2250)], 1e-5) <= 8.0 < epsilon_of([(ours - 0.02, 0.04, 2250)], 1e-5)
    # Replace-one needs more noise than Opacus's add/remove calibration for the same budget.
    assert ours > get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=0.04, epochs=90,
                                       accountant="prv")


def test_dp_accounting_rdp_published_table_for_poisson_sampled_gaussian():
    # dp-accounting's rdp_privacy_accountant_test: q = 0.01, sigma = 2.5, 50 steps, RDP at these orders.
    orders = [1.5, 2.5, 5, 50, 100]
    acc = dp_accounting.rdp.RdpAccountant(orders=orders)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(2.5)), 50)
    expected = [6.70579741e-04, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02, 1.67416308e02]
    assert np.allclose(acc._rdp, expected, rtol=1e-4)


def test_central_dp_account_is_a_gaussian_at_half_the_multiplier_and_matches_flower_there():
    # dp-accounting's test table: one Gaussian release with sigma = 4.530877117 is (1, 1e-6)-DP.
    assert 1.0 <= epsilon_of_releases([4.530877117], 1e-6) <= 1.05
    # Replace-one-hospital: the mean of m clipped updates moves by up to 2C/m, so noise z C / m is a
    # Gaussian with multiplier z / 2; Flower's accountant (zero-out adjacency) agrees once handed z / 2.
    flower = RdpAccountant(PrivacyConfig(target_delta=1e-4, population_size=50,
                                         neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                         sampling_method=SamplingMethod.NO_AMPLIFICATION))
    for _ in range(30):
        flower.compose(GaussianPrivacyEvent(noise_multiplier=0.6, sample_size=30, population_size=50))
    assert flower.get_privacy_spent().epsilon == pytest.approx(epsilon_after(1.2, 30, 1e-4), rel=1e-9)
