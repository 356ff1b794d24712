"""The sample-level audit's white-box gradient canaries (issue 23): the canaries in real DP-SGD steps, the seam
they use, and audits of real runs (no DP, epsilon 2, and a node whose noise was dropped)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from audit_checks import assert_failed_audit_is_reported_and_signed

REPO = Path(__file__).resolve().parents[1]


def _private_training(noise: float, canaries, *, rows: int = 96, batch: int = 24, features: int = 16):
    """One local round of the real DP-SGD step (client.privacy.dp_training.make_private) on a small linear model,
    with ``canaries`` on the audit's seam; returns the step and the canaries."""
    from client.local_training import STEP_OBSERVER, train_epochs
    from client.privacy.dp_training import DPPlan, make_private

    torch.manual_seed(0)
    model = nn.Linear(features, 7)
    data = TensorDataset(torch.randn(rows, features), torch.randint(0, 7, (rows,)), torch.zeros(rows, 2))
    loader = DataLoader(data, batch_size=batch)
    plan = DPPlan(noise_multiplier=1.0, sample_rate=1 / len(loader), steps_per_round=len(loader), max_grad_norm=0.5)
    step = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, plan, accountant="rdp")
    step.optimizer.noise_multiplier = noise
    token = STEP_OBSERVER.set(canaries)
    try:
        train_epochs(step.model, step.loader, step.optimizer, epochs=3, n_inputs=1, device=torch.device("cpu"),
                     private=step)
    finally:
        STEP_OBSERVER.reset(token)
    return step, canaries


def test_gradient_canaries_join_the_clipped_sum_before_the_noise_at_plus_or_minus_c():
    from simulations.audit.gradient_canaries import GradientCanaries, directions

    coins = [1, 0, 1, 0, 1, 0, 1, 0]
    seeds = list(range(100, 108))
    step, canaries = _private_training(0.0, GradientCanaries(seeds, coins, default_norm=9.0))
    assert canaries.steps == 12 and canaries.sample_rate == 0.25 and canaries.canary_norm == 0.5  # the node's C
    assert 0 < canaries.inclusions.sum() < 8 * 12  # Poisson-sampled, not always in
    # No noise: release minus the records' own clipped sum is exactly the sampled canaries' +-C e_i, so each
    # score is +-C x its inclusions plus the other canaries' small overlaps with its direction.
    e = directions(seeds, sum(p.numel() for p in step.module.parameters()))
    overlap = (e @ e.T - torch.eye(8)).abs().max().item()
    expected = 0.5 * np.where(np.array(coins) == 1, 1.0, -1.0) * canaries.inclusions
    assert np.abs(canaries.scores - expected).max() <= 0.5 * overlap * canaries.inclusions.sum() + 1e-4
    assert not np.allclose(canaries.released, canaries.scores)  # the release also holds the records' gradients

    # With noise: 64 canaries' scores move by the noise, std z C per step (z = 1 here), 12 steps. In 1,799
    # dimensions the records' own clipped gradients and the other canaries barely project on a canary's direction
    # (in the 119 above they added 0.5-0.75 of the noise's spread, and the check failed about one run in 12).
    coins = [i % 2 for i in range(64)]
    _, noisy = _private_training(1.0, GradientCanaries(list(range(64)), coins, default_norm=9.0), features=256)
    signal = 0.5 * np.where(np.array(coins) == 1, 1.0, -1.0) * noisy.inclusions
    spread = np.std(noisy.scores - signal)
    assert 0.6 * 0.5 * np.sqrt(12) < spread < 1.5 * 0.5 * np.sqrt(12)


def test_gradient_canaries_without_dp_join_the_plain_batch_sum_at_the_default_norm():
    from client.local_training import STEP_OBSERVER, train_epochs
    from simulations.audit.gradient_canaries import GradientCanaries

    torch.manual_seed(0)
    model = nn.Linear(16, 7)
    loader = DataLoader(TensorDataset(torch.randn(96, 16), torch.randint(0, 7, (96,)), torch.zeros(96, 2)),
                        batch_size=32)
    canaries = GradientCanaries([1, 2, 3, 4], [1, 1, 0, 0], default_norm=1.0)
    token = STEP_OBSERVER.set(canaries)
    try:
        train_epochs(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, n_inputs=1,
                     device=torch.device("cpu"))
    finally:
        STEP_OBSERVER.reset(token)
    assert canaries.steps == 6 and canaries.canary_norm == 1.0 and abs(canaries.sample_rate - 1 / 3) < 1e-12
    signs = np.array([1, 1, -1, -1])
    assert np.all(np.abs(canaries.scores - signs * canaries.inclusions) < 0.5 * canaries.inclusions.sum() + 1e-4)


def test_the_step_observer_seam_is_unset_by_default_and_no_product_code_sets_it():
    from client.local_training import STEP_OBSERVER

    assert STEP_OBSERVER.get() is None  # unset, train_epochs trains exactly as before
    setters = []
    for folder in ("client", "server", "shared_models", "simulations"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            if re.search(r"STEP_OBSERVER\s*\.\s*set\s*\(", text):
                setters.append(str(path.relative_to(REPO)))
    assert setters == ["simulations/audit/canary_app.py"]  # the audit's ClientApp, research runs only


# ---- audits of real runs (Flower simulations): a tiny face federation -------------------------------------------

CANARIES = 500  # every guess right at delta 1e-5: a bound of at most about 3.9, above every claim tested here


def tiny_sample_audit(tmp_path: Path, name: str, client_app: str | None = None, **overrides) -> dict:
    from simulations.audit.run import CANARY_APP, run_audit

    run_dir = run_audit(REPO / "configs" / "quickstart_dp.toml", {
        "data-dir": str(tmp_path / "fer"), "runs-dir": str(tmp_path / "runs"), "run-name": name,
        "synth-samples": 600, "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": 2,
        "divergence-rounds": 0, "audit": "sample", "audit-canaries": CANARIES, "dp-delta": 1e-5, **overrides},
        client_app=client_app or CANARY_APP)
    return json.loads((run_dir / "audit.json").read_text()) | {"run_dir": str(run_dir)}


@pytest.mark.slow
def test_no_dp_audits_well_above_a_dp_run_at_epsilon_2_which_stays_at_or_below_2(tmp_path):
    open_run = tiny_sample_audit(tmp_path, "nodp", dp=False, **{"eval-dp-noise-multiplier": 0.0})
    private = tiny_sample_audit(tmp_path, "eps2", **{"dp-epsilon": 2.0})
    print(f"no DP: {open_run['correct']}/{open_run['guesses']} right, bound {open_run['lower_bound']:.2f} "
          f"(ceiling {open_run['ceiling']:.2f}, release-only score {open_run['released_sum']['lower_bound']:.2f}); "
          f"epsilon {private['claimed_epsilon']:.2f}: {private['correct']}/{private['guesses']}, bound "
          f"{private['lower_bound']:.2f}, {'PASSED' if private['passed'] else 'FAILED'}")
    assert open_run["claimed_epsilon"] is None and open_run["mechanism"].startswith("none")
    assert 1.5 < private["claimed_epsilon"] <= 2.0 and private["ceiling"] > 2.0  # the audit could exceed the claim
    # no DP: every canary sampled at least once sits on its coin's side (k = m/5 all right: about 3.0 of 3.9)
    assert open_run["lower_bound"] > 2.5 and open_run["lower_bound"] > private["lower_bound"] + 2
    assert private["lower_bound"] <= 2.0 and private["passed"]
    assert json.loads((Path(private["run_dir"]) / "report.json").read_text())["audit"]["passed"] is True
    for audit in (open_run, private):
        assert len(audit["scores"]) == len(audit["coins"]) == len(audit["inclusions"]) == CANARIES
        assert set(audit["coins"]) == {0, 1} and audit["score"].startswith("white-box gradient canaries")
        steps = audit["steps_by_hospital"]
        assert sorted(steps) == ["0", "1", "2"] and all(s > 0 for s in steps.values())
        # every canary Poisson-sampled at its node's rate over its node's steps
        for node, rate in audit["sample_rate_by_hospital"].items():
            taken = [i for i, c in enumerate(audit["canaries"]) if str(c["node"]) == node]
            mean = np.mean([audit["inclusions"][i] for i in taken])
            assert abs(mean - rate * steps[node]) < 4 * np.sqrt(rate * steps[node] / len(taken)) + 0.05
    assert private["clipping_norm_by_hospital"] == {"0": 1.0, "1": 1.0, "2": 1.0}
    assert not list((tmp_path / "runs" / ".audit-plans").iterdir())  # the coins live in audit.json only


@pytest.mark.slow
def test_a_node_that_drops_its_dp_sgd_noise_is_caught_and_the_report_marks_the_audit_failed(tmp_path):
    # TEST-ONLY fault (tests/audit_fault_app.py): Opacus's noise multiplier set to 0 after make_private, while
    # every node's ledger still records and reports the epsilon (1) its planned noise would give.
    broken = tiny_sample_audit(tmp_path, "broken", client_app="tests.audit_fault_app:no_noise_app",
                               **{"dp-epsilon": 1.0})
    print(f"noise dropped, claimed {broken['claimed_epsilon']:.2f}: {broken['correct']}/{broken['guesses']} right, "
          f"bound {broken['lower_bound']:.2f} (ceiling {broken['ceiling']:.2f}), "
          f"{'PASSED' if broken['passed'] else 'FAILED'}")
    assert 0.8 < broken["claimed_epsilon"] <= 1.0
    assert_failed_audit_is_reported_and_signed(broken)
