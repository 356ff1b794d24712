"""Differential privacy: the ledger composes and persists, budgets are enforced, epsilon is recomputable."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from client.dp_training import calibrate_noise
from shared_models.privacy_ledger import BudgetExceeded, LedgerError, PrivacyLedger, epsilon_of


def test_ledger_epsilon_is_opacus_epsilon_of_the_recorded_events():
    events = [(1.1, 0.05, 40), (1.1, 0.05, 40), (0.9, 0.1, 20)]
    rdp = RDPAccountant()
    for sigma, q, steps in events:
        rdp.history.append((sigma, q, steps))
    assert epsilon_of(events, 1e-5, "rdp") == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-9)
    assert epsilon_of([], 1e-5, "prv") == 0.0
    # Composition: more events never lower epsilon.
    assert epsilon_of(events, 1e-5, "prv") > epsilon_of(events[:2], 1e-5, "prv") > epsilon_of(events[:1], 1e-5, "prv")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_meets_the_target_like_opacus_does(accountant):
    sigma = calibrate_noise([], 0.02, 500, target_epsilon=3.0, delta=1e-5, accountant=accountant)
    assert epsilon_of([(sigma, 0.02, 500)], 1e-5, accountant) <= 3.0
    assert epsilon_of([(sigma - 0.05, 0.02, 500)], 1e-5, accountant) > 3.0  # the smallest such noise
    reference = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.02, steps=500,
                                     accountant=accountant)
    assert sigma == pytest.approx(reference, abs=0.03)


def test_ledger_survives_restart_without_double_counting_or_reset(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, dataset_id="cremad:/data#natural/3", epsilon_budget=4.0,
                                delta=1e-5, accountant="rdp")
    ledger.record(run="r1", server_round=1, noise_multiplier=1.2, sample_rate=0.05, steps=40, max_grad_norm=1.0)
    spent = ledger.spent()
    again = PrivacyLedger.open(tmp_path, dataset_id="cremad:/data#natural/3", epsilon_budget=100.0,
                               delta=1e-3, accountant="prv")  # a later run cannot widen the budget
    assert again.spent() == pytest.approx(spent) and len(again.events) == 1
    assert again.epsilon_budget == 4.0 and again.delta == 1e-5 and again.accountant == "rdp"
    again.record(run="r2", server_round=1, noise_multiplier=1.2, sample_rate=0.05, steps=40, max_grad_norm=1.0)
    assert PrivacyLedger.load(tmp_path / "privacy_ledger.json").spent() > spent  # composes across runs
    assert "run r1: 1 rounds" in again.describe() and "remaining" in again.describe()


def test_node_refuses_a_round_past_its_budget(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5, accountant="rdp")
    ledger.check(5.0, 0.01, 10)  # cheap round fits
    with pytest.raises(BudgetExceeded, match="round declined"):
        ledger.check(0.5, 0.5, 200)
    assert ledger.events == []  # a refused round spends nothing


def test_corrupt_missing_or_foreign_ledger_is_an_error_not_a_reset(tmp_path):
    PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5, accountant="rdp")
    path = tmp_path / "privacy_ledger.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5, accountant="rdp")
    path.unlink()
    with pytest.raises(LedgerError, match="missing"):
        PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5, accountant="rdp")
    other = tmp_path / "other"
    PrivacyLedger.open(other, dataset_id="a", epsilon_budget=1.0, delta=1e-5, accountant="rdp")
    with pytest.raises(LedgerError, match="separate state folder"):
        PrivacyLedger.open(other, dataset_id="b", epsilon_budget=1.0, delta=1e-5, accountant="rdp")
    assert json.loads((other / "node.json").read_text())["dataset_id"] == "a"
