"""Sample-level DP-SGD for one local round: a noise level calibrated once per run against the node's ledger,
and Opacus's engine with secret randomness (``make_private``).

The noise multiplier keeps everything already spent plus the whole planned run within the dataset's budget
(Flower's Opacus example builds a fresh engine every round, so its epsilon never composes). Poisson sampling is
always on, as the accountants assume. The Poisson masks and the gradient noise come from generators seeded from
the OS CSPRNG, never from the run's seed, which the coordinator knows (docs/privacy.md).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader

from client.privacy.clipping.book_keeping import BookKeepingCapture, book_keeping_layers
from client.privacy.dp_optimizer import secret_generator, trained_module, with_secret_noise
from client.privacy.poisson_sampler import BlockPoissonSampler
from client.privacy.private_step import BOOK_KEEPING, CLIPPING, HOOKS, PrivateStep
from shared_models.privacy_ledger import ACCOUNTANT, REPLACE_ONE, BudgetExceeded, PrivacyLedger, epsilon_of

_MIN_SIGMA = 0.05


@dataclass(frozen=True)
class DPPlan:
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    max_grad_norm: float


def calibrate_noise(prior: list[tuple[float, float, int]], sample_rate: float, steps: int, *,
                    target_epsilon: float, delta: float, accountant: str = ACCOUNTANT, max_noise: float = 10.0,
                    tolerance: float = 0.01, adjacency: str = REPLACE_ONE) -> float:
    """Smallest noise multiplier (to ``tolerance``) keeping prior + planned releases within the target.

    Training epsilon is replace-one (shared_models.privacy_ledger.ADJACENCY), the figure the ledger binds;
    noised evaluation counts pass ``adjacency`` add/remove (client/privacy/group_counts.py eval_noise_multiplier).
    Beyond ``max_noise`` the updates are noise, not learning: a node whose
    remaining budget would need more declines instead of pretending to train.
    The bisection runs on the log scale of the multiplier (about 10 PLD
    figures of 0.1 s each), and its result is cached: 50 alike simulated
    nodes calibrate once per process.
    """
    return _calibrate(tuple(prior), float(sample_rate), int(steps), float(target_epsilon), float(delta), accountant,
                      float(max_noise), float(tolerance), adjacency)


@functools.lru_cache(maxsize=256)
def _calibrate(prior: tuple[tuple[float, float, int], ...], sample_rate: float, steps: int, target_epsilon: float,
               delta: float, accountant: str, max_noise: float, tolerance: float, adjacency: str) -> float:
    def eps(sigma: float) -> float:
        return epsilon_of(list(prior) + [(sigma, sample_rate, steps)], delta, accountant, adjacency)

    lo, hi = _MIN_SIGMA, max_noise
    if eps(hi) > target_epsilon:
        raise BudgetExceeded(f"run declined: no noise multiplier up to {hi:g} (dp-max-noise-multiplier) keeps epsilon within "
                             f"{target_epsilon:g} for the planned training; the remaining budget is too small")
    while hi - lo > tolerance:
        mid = max(math.sqrt(lo * hi), lo + tolerance / 2) if hi / lo > 1.5 else (lo + hi) / 2
        mid = min(mid, hi - tolerance / 2)
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi


PARTICIPATION_QUANTILE = 0.95


def planned_participation(num_rounds: int, fraction_train: float) -> int:
    """Rounds a node plans to train: the 95th percentile of how often it is sampled, not every round.

    Flower samples ``fraction-train`` of the nodes each round, independently,
    so a node trains in Binomial(rounds, fraction) rounds. Calibrating the
    noise as if it trained every round leaves about 1 - fraction of its
    budget unspent (40% at fraction 0.6); planning for the 95th percentile
    spends nearly all of it with less noise per step, and the rare node
    sampled more often than planned declines its extra rounds (the ledger
    never lets it pass the budget).
    """
    if fraction_train >= 1.0:
        return num_rounds
    from scipy.stats import binom

    return max(1, min(num_rounds, int(binom.ppf(PARTICIPATION_QUANTILE, num_rounds, fraction_train))))


def plan_round(ledger: PrivacyLedger, run: str, *, batches_per_epoch: int, local_epochs: int,
               num_rounds: int, max_grad_norm: float, max_noise: float) -> DPPlan:
    """This run's noise level: the one already recorded for it, or a fresh calibration.

    Opacus samples each record with q = 1 / (batches per epoch) and takes that
    many steps per epoch, so those are the figures accounted for. Only the
    ledger's training events count: noised evaluation counts cover the test
    records, which never enter training, and have their own epsilon (parallel
    composition), so training leaves no room for them.
    """
    sample_rate = 1.0 / batches_per_epoch
    steps_per_round = local_epochs * batches_per_epoch
    sigma = ledger.run_noise(run, "train")  # a run keeps one noise level, also across a node restart
    if sigma is None:
        sigma = calibrate_noise(ledger.mechanisms("train"), sample_rate, steps_per_round * num_rounds,
                                target_epsilon=ledger.epsilon_budget, delta=ledger.delta,
                                accountant=ledger.accountant, max_noise=max_noise)
    return DPPlan(sigma, sample_rate, steps_per_round, max_grad_norm)


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, plan: DPPlan, *,
                 accountant: str, secure_mode: bool = False, clipping: str | None = None) -> PrivateStep:
    """Opacus's one entry point, with the Poisson masks and the noise drawn from secret generators.

    Opacus's DPDataLoader takes the passed loader's generator for its masks (outside secure mode), so the loader
    is rebuilt on a secret one; the noise generator lives on the model's device and draws every parameter's noise
    at once (client/privacy/dp_optimizer.py). ``clipping`` (default: book-keeping
    where its rules cover every trained layer, else Opacus's hooks) changes the cost, never the mechanism.
    """
    layers = book_keeping_layers(model)
    clipping = clipping or (BOOK_KEEPING if layers is not None else HOOKS)
    if clipping not in CLIPPING:
        raise ValueError(f"clipping must be one of {CLIPPING}, got {clipping!r}")
    if clipping == BOOK_KEEPING and layers is None:
        raise ValueError("book-keeping clipping has no rule for a trained layer of this model: use Opacus's hooks")
    with warnings.catch_warnings():  # "Secure RNG turned off": the masks and noise below come from secret seeds
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
    secret_loader = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                               num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                               generator=secret_generator())
    device = next(model.parameters()).device
    # Book-keeping runs on Opacus's ghost-clipping optimizer (it noises, scales and accounts a clipped sum in .grad)
    # with the ghost hooks removed; the hooks mode's optimizer clips Opacus's per-sample gradients itself.
    private = engine.make_private(
        module=model, optimizer=optimizer, data_loader=secret_loader,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm, poisson_sampling=True,
        noise_generator=None if secure_mode else secret_generator(device),
        grad_sample_mode="ghost" if clipping == BOOK_KEEPING else "hooks",
    )
    private_model, private_loader = private[0], _block_sampled(private[-1])
    private_optimizer = with_secret_noise(private[1])  # same mechanism and hook; one flat secret draw per step
    if private_optimizer.noise is not None:
        private_optimizer.noise.expect(plan.steps_per_round)  # the round's draws: a few at a time, none beyond
    capture = None
    if clipping == BOOK_KEEPING:
        private_model.remove_hooks()
        capture = BookKeepingCapture(trained_module(private_model), layers)
    return PrivateStep(private_model, private_optimizer, private_loader, engine, plan.max_grad_norm, capture)


def _block_sampled(loader: DataLoader) -> DataLoader:
    """Opacus's Poisson loader with its masks drawn a block of steps at a time (client/privacy/poisson_sampler.py):
    the same sampler settings, generator, dataset and empty-batch collation, so the same batches."""
    sampler = loader.batch_sampler
    if type(sampler) is not UniformWithReplacementSampler:  # Opacus's distributed sampler: left as it is
        return loader
    block = BlockPoissonSampler(num_samples=sampler.num_samples, sample_rate=sampler.sample_rate,
                                generator=sampler.generator, steps=sampler.steps)
    return DataLoader(loader.dataset, batch_sampler=block, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, generator=loader.generator)
