"""The one-run empirical privacy audit (issue 23): the bound from counts, and audits of real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared_models.privacy_audit.one_run_bound import audit_scores, ceiling, epsilon_lower_bound

REFERENCE = Path(__file__).parent / "fixtures" / "one_run_audit_reference.json"


def test_bound_equals_jax_privacy_reference_values():
    cases = json.loads(REFERENCE.read_text())["cases"]
    assert len(cases) >= 10 and any(c["epsilon"] > 3 for c in cases) and any(c["epsilon"] == 0 for c in cases)
    for c in cases:
        ours = epsilon_lower_bound(c["m"], c["guesses"], c["correct"], c["significance"], c["delta"])
        assert ours == pytest.approx(c["epsilon"], abs=1e-4), c


def test_ceiling_of_1000_canaries_is_about_5_and_random_coins_audit_near_zero():
    assert 4.4 < ceiling(1000, 0.05, 1e-5) < 5.2  # every guess right: the most 1000 canaries can show
    rng = np.random.default_rng(0)
    coins = rng.random(1000) < 0.5
    outcome = audit_scores(rng.standard_normal(1000), coins, significance=0.05, delta=1e-5)
    assert outcome.lower_bound < 0.5  # scores that ignore the coins
    leaky = audit_scores(coins + 0.01 * rng.standard_normal(1000), coins, significance=0.05, delta=1e-5)
    assert leaky.lower_bound > 3.5 and leaky.correct == leaky.guesses
