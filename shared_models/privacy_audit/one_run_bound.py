"""The empirical lower bound on epsilon from one training run (Steinke, Nasr and Jagielski 2023).

m canaries each enter training with probability 1/2 (a secret coin). After training the auditor
guesses "in" for the ``guesses`` canaries with the highest scores and abstains on the rest. Under
(epsilon, delta)-DP with respect to each coin, the number of correct guesses is stochastically
dominated by Binomial(guesses, e^eps / (1 + e^eps)) plus a delta term (the paper's Theorem 5.2);
the bound is the largest epsilon whose p-value for the observed count is below ``significance``.
One-sided (no "out" guesses), as in jax_privacy's ``CanaryScoreAuditor.epsilon_one_run``, against
which tests/test_privacy_audit.py checks it (reference values in tests/fixtures/).

Only numpy and scipy: the report builder (server/) and the audit run (simulations/) both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom

TOLERANCE = 1e-7  # bisection width on epsilon
AUDIT_FILE = "audit.json"  # an audit run's canaries, scores, coins and bound, in its run folder


def p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[at least ``correct`` right of ``guesses``] under (epsilon, delta)-DP with m canaries.

    beta = P[Binomial(guesses, q) >= correct], q = e^eps / (1 + e^eps); with delta > 0 the paper adds
    2 m delta times the largest (P[Binomial >= correct - i] - beta) / i over i = 1..correct.
    """
    q = float(expit(epsilon))
    beta = float(binom.sf(correct - 1, guesses, q))
    if delta == 0 or correct == 0:
        return beta
    i = np.arange(1, correct + 1)
    alpha = float(np.max((binom.sf(correct - i - 1, guesses, q) - beta) / i, initial=0.0))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, guesses: int, correct: int, significance: float, delta: float) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` reject at ``significance`` (0 if none)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    if not 0 <= correct <= guesses <= m:
        raise ValueError(f"need 0 <= correct ({correct}) <= guesses ({guesses}) <= m ({m})")
    if guesses == 0 or p_value(m, guesses, correct, 0.0, delta) > significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, guesses, correct, high, delta) <= significance:  # p grows with epsilon
        low, high = high, 2 * high
        if high > 1e4:
            return math.inf
    while high - low > TOLERANCE:
        mid = (low + high) / 2
        if p_value(m, guesses, correct, mid, delta) <= significance:
            low = mid
        else:
            high = mid
    return low


def ceiling(m: int, significance: float, delta: float, guess_grid: tuple[int, ...] | None = None) -> float:
    """The most any audit of m canaries can show: every guess right, at the best k of the grid it may use."""
    grid = guess_grid or default_guess_grid(m)
    level = significance / len(grid)
    return max(epsilon_lower_bound(m, k, k, level, delta) for k in grid)


def default_guess_grid(m: int) -> tuple[int, ...]:
    """The guess counts an audit tries when none is pre-registered: 1/100 to 1/2 of m (Bonferroni over them)."""
    return tuple(sorted({max(1, round(m * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)}))


@dataclass(frozen=True)
class AuditOutcome:
    m: int
    guesses: int
    correct: int
    threshold: float  # the lowest score guessed "in"
    significance: float  # the level each grid point was tested at (Bonferroni: significance / grid size)
    delta: float
    lower_bound: float
    guess_grid: tuple[int, ...]
    how_k_chosen: str


def audit_scores(scores: np.ndarray, coins: np.ndarray, *, significance: float, delta: float,
                 guesses: int | None = None) -> AuditOutcome:
    """Guess "in" for the top-k scores; k pre-registered (``guesses``) or the best of a fixed grid, Bonferroni-corrected.

    Ties at the threshold are broken by canary order, which carries no information (canaries are prepared
    before their coins are drawn).
    """
    scores = np.asarray(scores, dtype=np.float64)
    coins = np.asarray(coins, dtype=bool)
    m = len(scores)
    if len(coins) != m or m == 0:
        raise ValueError(f"{m} scores for {len(coins)} coins")
    if not np.all(np.isfinite(scores)):
        raise ValueError("every canary score must be finite")
    order = np.argsort(-scores, kind="stable")
    right = np.cumsum(coins[order])
    if guesses is not None:
        grid, level, how = (int(guesses),), significance, f"pre-registered: k = {guesses} (audit-guesses)"
    else:
        grid = default_guess_grid(m)
        level = significance / len(grid)
        how = (f"best of the fixed grid k in {list(grid)}, each tested at significance {significance}/{len(grid)} "
               "(Bonferroni), so choosing k after seeing the scores is paid for")
    best = None
    for k in grid:
        bound = epsilon_lower_bound(m, k, int(right[k - 1]), level, delta)
        if best is None or bound > best[1]:
            best = (k, bound)
    k, bound = best
    return AuditOutcome(m=m, guesses=k, correct=int(right[k - 1]), threshold=float(scores[order[k - 1]]),
                        significance=level, delta=delta, lower_bound=bound, guess_grid=grid, how_k_chosen=how)
