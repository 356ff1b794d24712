"""Differential privacy: the ledger composes and persists, budgets are enforced, epsilon is recomputable."""

from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

from client.privacy.dp_training import calibrate_noise
from shared_models.privacy_ledger import PLD_DISCRETIZATION, BudgetExceeded, LedgerError, PrivacyLedger, epsilon_of


def _dp_accounting_epsilon(events, delta, relation, interval=PLD_DISCRETIZATION):
    """dp-accounting's PLD accountant composing each event on its own (no grouping), written out here."""
    acc = PLDAccountant(relation, value_discretization_interval=interval)
    for sigma, q, steps in events:
        gaussian = dp_accounting.GaussianDpEvent(sigma)
        acc.compose(dp_accounting.SelfComposedDpEvent(
            gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian), steps))
    return acc.get_epsilon(delta)


def test_ledger_epsilons_are_dp_accountings_under_each_kinds_adjacency(tmp_path):
    """Training under replace-one, evaluation counts under add/remove, each composed apart (parallel
    composition over the split), each equal to dp-accounting's PLD on the recorded events."""
    train = [(1.1, 0.05, 40), (1.1, 0.05, 40), (0.9, 0.1, 20)]
    counts = [(5.0, 1.0, 3), (5.0, 1.0, 3)]
    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=100.0, delta=1e-5)
    for i, (sigma, q, steps) in enumerate(train):
        ledger.spend(run="r", server_round=i, noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0)
        if i < len(counts):
            ledger.spend(run="r", server_round=i, noise_multiplier=counts[i][0], sample_rate=1.0, steps=3,
                         max_grad_norm=1.0, kind="eval-counts")
    replace_one = _dp_accounting_epsilon(train, 1e-5, NeighboringRelation.REPLACE_ONE)
    add_remove = _dp_accounting_epsilon(counts, 1e-5, NeighboringRelation.ADD_OR_REMOVE_ONE)
    # (The ledger composes identical events as one; composed one by one they agree to the grid's precision.)
    assert ledger.spent("train") == pytest.approx(replace_one, rel=1e-5)
    assert ledger.spent("eval-counts") == pytest.approx(add_remove, rel=1e-5)
    # The ledger's grid (1e-3) is pessimistic: never below dp-accounting's default (1e-4) grid, within 1%.
    fine = _dp_accounting_epsilon(train, 1e-5, NeighboringRelation.REPLACE_ONE, 1e-4)
    assert fine <= ledger.spent("train") <= fine * 1.01
    # Replace-one costs more than add/remove for the same events (what the old ledger reported).
    assert ledger.spent("train") > epsilon_of(train, 1e-5, "prv", "add-remove")
    assert [(e.adjacency, e.accountant) for e in ledger.events if e.kind == "train"] == [("replace-one", "pld")] * 3
    assert {e.adjacency for e in ledger.events if e.kind == "eval-counts"} == {"add-remove"}
    assert epsilon_of([], 1e-5) == 0.0
    assert epsilon_of(train, 1e-5) > epsilon_of(train[:2], 1e-5) > epsilon_of(train[:1], 1e-5)  # composition


@pytest.mark.slow  # over 5 s on 2 quiet cores (per-test CPU time measured under load)
def test_calibration_meets_the_target_like_dp_accountings_own_calibration():
    from dp_accounting import mechanism_calibration

    sigma = calibrate_noise([], 0.02, 500, target_epsilon=3.0, delta=1e-5)
    assert epsilon_of([(sigma, 0.02, 500)], 1e-5) <= 3.0
    assert epsilon_of([(sigma - 0.05, 0.02, 500)], 1e-5) > 3.0  # the smallest such noise
    reference = mechanism_calibration.calibrate_dp_mechanism(
        lambda: PLDAccountant(NeighboringRelation.REPLACE_ONE),
        lambda z: dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(z)), 500),
        3.0, 1e-5, mechanism_calibration.LowerEndpointAndGuess(0.1, 1.0), tol=0.005)
    assert sigma == pytest.approx(reference, abs=0.03)


def test_ledger_survives_restart_without_double_counting_or_reset(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, dataset_id="cremad:/data#natural/3", epsilon_budget=4.0, delta=1e-5)
    ledger.record(run="r1", server_round=1, noise_multiplier=1.2, sample_rate=0.05, steps=40, max_grad_norm=1.0)
    spent = ledger.spent()
    again = PrivacyLedger.open(tmp_path, dataset_id="cremad:/data#natural/3", epsilon_budget=100.0,
                               delta=1e-3)  # a later run widens neither the budget nor delta
    assert again.spent() == pytest.approx(spent) and len(again.events) == 1
    assert again.epsilon_budget == 4.0 and again.delta == 1e-5 and again.accountant == "pld"
    again.record(run="r2", server_round=1, noise_multiplier=1.2, sample_rate=0.05, steps=40, max_grad_norm=1.0)
    assert PrivacyLedger.load(tmp_path / "privacy_ledger.json").spent() > spent  # composes across runs
    assert "run r1: 1 rounds" in again.describe() and "remaining" in again.describe()


def test_node_refuses_a_round_past_its_budget(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5)
    ledger.check(5.0, 0.01, 10)  # cheap round fits
    with pytest.raises(BudgetExceeded, match="round declined"):
        ledger.check(0.5, 0.5, 200)
    assert ledger.events == []  # a refused round spends nothing


def test_corrupt_missing_or_foreign_ledger_is_an_error_not_a_reset(tmp_path):
    PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5)
    path = tmp_path / "privacy_ledger.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5)
    path.unlink()
    with pytest.raises(LedgerError, match="missing"):
        PrivacyLedger.open(tmp_path, dataset_id="d", epsilon_budget=1.0, delta=1e-5)
    other = tmp_path / "other"
    PrivacyLedger.open(other, dataset_id="a", epsilon_budget=1.0, delta=1e-5)
    with pytest.raises(LedgerError, match="separate state folder"):
        PrivacyLedger.open(other, dataset_id="b", epsilon_budget=1.0, delta=1e-5)
    assert json.loads((other / "node.json").read_text())["dataset_id"] == "a"


# --------------------------------------------------------------------------- DP-SGD's clipping, whatever the mode
def _private_update(name: str, mode: str, *, weighted: bool = False, va: bool = False) -> list:
    """One noiseless DP-SGD step of model ``name`` with clipping path ``mode``, on a fixed batch."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from client.privacy.dp_training import DPPlan, make_private
    from client.local_training import train_epochs
    from shared_models.models.registry import build_model, model_task

    torch.manual_seed(0)
    model = build_model(name, valence_arousal=va) if va else build_model(name)
    g = torch.Generator().manual_seed(1)
    n = 6
    if model_task(name) == "face":
        inputs = (torch.rand(n, 1, 48, 48, generator=g),)
    else:
        mask = torch.ones(n, 6, dtype=torch.bool)
        mask[::2, 3:] = False
        inputs = (torch.randn(n, 6, 128, 32, generator=g), mask)
    fields = (*inputs, torch.randint(0, 7, (n,), generator=g), torch.rand(n, 2, generator=g) * 2 - 1)
    if weighted:
        fields = (*fields, torch.rand(n, generator=g) + 0.5)
    loader = DataLoader(TensorDataset(*fields), batch_size=n)
    # Clipping norm 0.05: every sample's gradient is clipped, so a wrong clipping factor would show.
    dp = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader, DPPlan(0.0, 1.0, 1, 0.05),
                      accountant="rdp", clipping=mode)
    before = [p.detach().clone() for p in dp.model.parameters()]
    train_epochs(dp.model, loader, dp.optimizer, epochs=1, n_inputs=len(inputs), device=torch.device("cpu"),
                 private=dp)  # the fixed batch, not the Poisson loader: the same samples for every mode
    return [b - p.detach() for b, p in zip(before, dp.model.parameters())]


@pytest.mark.parametrize("name,mode,weighted,va", [
    ("face_scatter", "book-keeping", False, False), ("face_scatter", "book-keeping", True, False),
    ("voice_stats", "book-keeping", True, False), ("face_cnn", "book-keeping", False, False),
    ("voice_crnn", "book-keeping", True, True)])
def test_every_grad_sample_mode_clips_like_opacus_hooks(name, mode, weighted, va):
    """Book-keeping clipping (one backward pass, per-layer rules) gives the same clipped, summed gradient as
    Opacus's hooks: the path changes the cost, never the mechanism."""
    import torch

    expected = _private_update(name, "hooks", weighted=weighted, va=va)
    got = _private_update(name, mode, weighted=weighted, va=va)
    assert any(float(e.abs().max()) > 0 for e in expected)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name,mode", [("face_scatter", "book-keeping"), ("voice_stats", "book-keeping"),
                                       ("face_cnn", "book-keeping"), ("voice_crnn", "book-keeping")])
def test_each_model_trains_under_dp_in_its_mode_and_an_empty_batch_is_pure_noise(name, mode):
    """The models' documented modes; an empty Poisson batch still takes a (noise-only) step in each."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from client.privacy.dp_training import DPPlan, make_private
    from client.local_training import train_epochs
    from shared_models.models.registry import build_model, model_task

    model = build_model(name)
    n = 8
    if model_task(name) == "face":
        inputs = (torch.rand(n, 1, 48, 48),)
    else:
        inputs = (torch.randn(n, 6, 128, 32), torch.ones(n, 6, dtype=torch.bool))
    data = TensorDataset(*inputs, torch.zeros(n, dtype=torch.long), torch.zeros(n, 2))
    dp = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), DataLoader(data, batch_size=4),
                      DPPlan(1.0, 0.5, 2, 1.0), accountant="rdp")
    assert dp.clipping == mode
    before = [p.detach().clone() for p in dp.model.parameters()]
    empty = [tuple(t[:0] for t in data.tensors)]  # what the Poisson loader yields when it samples no one
    train_epochs(dp.model, empty, dp.optimizer, epochs=1, n_inputs=len(inputs), device=torch.device("cpu"), private=dp)
    assert all(not torch.equal(b, p) for b, p in zip(before, dp.model.parameters()))  # noise, from no data
    trained = train_epochs(dp.model, DataLoader(data, batch_size=4), dp.optimizer, epochs=1, n_inputs=len(inputs),
                           device=torch.device("cpu"), private=dp)
    assert trained["train-samples"] == 8.0
    assert sum(steps for _, _, steps in dp.engine.accountant.history) == 3  # the empty step is accounted too
