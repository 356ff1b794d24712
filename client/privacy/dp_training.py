"""Sample-level DP-SGD for one local round, with a noise level calibrated for the whole run.

Flower's own Opacus example builds a fresh PrivacyEngine every round, so its
epsilon never composes. Here the node's ledger holds every past event; the
noise multiplier is calibrated once per run so that everything already spent
plus the whole planned run (rounds x local epochs x 1/q steps at sample rate
q = 1 / batches per epoch) stays within the dataset's budget, and each round is checked
against the ledger before it trains and recorded after it.

Poisson sampling (Opacus's DPDataLoader) is what the accountants assume, so
it is always on: the epsilon reported is that of the sampling actually used.

Both random draws of DP-SGD, the Poisson batch masks and the gradient noise,
come from generators seeded with 64 fresh bits from the operating system's
CSPRNG (``secrets``), never from the run's ``seed`` or round, which the
coordinator sends and so knows: an honest-but-curious coordinator can neither
rebuild the masks (which would void the amplification by sampling the
epsilon relies on) nor subtract the noise. Like Opacus outside its secure
mode, the generators themselves (Mersenne Twister on CPU, Philox on CUDA)
and the floating-point Gaussian are not cryptographically hardened;
``dp-secure-mode`` (Opacus's torchcsprng path) is refused at validation
while torchcsprng cannot be installed (docs/privacy.md).
"""

from __future__ import annotations

import functools
import math
import secrets
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

import client.privacy.per_sample_grads  # noqa: F401  (registers faster per-sample gradient rules with Opacus)
from client.privacy.book_keeping_clipping import book_keeping_backward, install_book_keeping, uses_book_keeping
from shared_models.privacy_ledger import ACCOUNTANT, REPLACE_ONE, BudgetExceeded, PrivacyLedger, epsilon_of
from shared_models.quiet_warnings import install as quiet_known_warnings

_MIN_SIGMA = 0.05
# Known-harmless warnings (among them torch's backward-hook warning on every step of a head on fixed
# features) are filtered in one place, with their reasons; the baseline imports this module without the ClientApp.
quiet_known_warnings()


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


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from the OS CSPRNG: nothing the coordinator sends or knows determines it."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(64))


# Opacus's ways of computing what DP-SGD clips ("hooks": per-sample gradients from module hooks; "ew":
# torch's expanded weights; "functorch": vmap'd per-sample gradients; "ghost": ghost clipping, per-sample
# gradient *norms* for Linear and Embedding without materialising the gradients, per-sample gradients for
# other layers, then a second backward pass weighted by the clipping factors). All clip every sample's
# gradient to the same norm and add the same noise: the choice changes the cost, not the mechanism.
GRAD_SAMPLE_MODES = ("hooks", "ew", "functorch", "ghost")


def default_grad_sample_mode(model: nn.Module) -> str:
    """The model's ``dp_grad_sample_mode`` (the fastest exact one, measured by simulations/benchmarks/dp_cost.py),
    else Opacus's default, "hooks"."""
    return getattr(model, "dp_grad_sample_mode", "hooks")


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, plan: DPPlan, *,
                 accountant: str, secure_mode: bool = False, grad_sample_mode: str | None = None,
                 ) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader, PrivacyEngine]:
    """Opacus's one entry point, with the Poisson masks and the noise drawn from secret generators.

    Opacus's DPDataLoader takes the passed loader's generator for its masks
    (outside secure mode), so the loader is rebuilt on a secret one; the noise
    generator lives on the model's device. ``grad_sample_mode`` (default: the
    model's, ``default_grad_sample_mode``) picks how the per-sample clipping is
    computed; under "ghost" the loss must be built per sample and wrapped by
    ``client.local_training.train_epochs`` (``ghost_clipping_loss``), which does so.
    """
    mode = grad_sample_mode or default_grad_sample_mode(model)
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got {mode!r}")
    with warnings.catch_warnings():  # "Secure RNG turned off": the masks and noise below come from secret seeds
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
    secret_loader = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                               num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                               generator=secret_generator())
    device = next(model.parameters()).device
    private = engine.make_private(
        module=model, optimizer=optimizer, data_loader=secret_loader,
        noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm, poisson_sampling=True,
        noise_generator=None if secure_mode else secret_generator(device), grad_sample_mode=mode,
    )
    # Ghost mode also returns a criterion wrapper; train_epochs wraps its own per-sample loss instead.
    private_model, private_optimizer, private_loader = private[0], private[1], private[-1]
    if mode == "ghost":
        _use_linear_head_clipping(private_model)
        install_book_keeping(private_model)  # Linear/Conv2d/GroupNorm models: hook-free book-keeping clipping
    return private_model, private_optimizer, private_loader, engine


def uses_ghost_clipping(model: nn.Module) -> bool:
    """Whether ``model`` is wrapped for ghost clipping: every backward pass must then go through
    ``ghost_clipping_loss`` (a plain one would leave unclipped gradients for the noise step)."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    return isinstance(model, GradSampleModuleFastGradientClipping)


def _register_linear_norm_sampler() -> None:
    """Opacus's ghost-clipping norm rule for ``nn.Linear``, with the 2-D case (one row per sample, e.g. a
    head on fixed features) computed as vector norms: Opacus's einsum there runs as a batched matrix
    product, about 10x slower than the norms (and, for a linear head on 11,664 features, a third of the
    DP step). The same values: ||g_i a_i^T|| = ||g_i|| ||a_i||; the bias's is ||g_i||. 3-D inputs
    (sequences) keep Opacus's rule. Registered through Opacus's own extension point."""
    from opacus.grad_sample.linear import compute_linear_norm_sample
    from opacus.grad_sample.utils import register_norm_sampler

    @register_norm_sampler(nn.Linear)
    def linear_norm_sample(layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor):
        if backprops.dim() != 2:
            return compute_linear_norm_sample(layer, activations, backprops)
        g = torch.linalg.vector_norm(backprops, dim=1)
        norms = {}
        if layer.weight.requires_grad:
            norms[layer.weight] = g * torch.linalg.vector_norm(activations[0].to(backprops.dtype), dim=1)
        if layer.bias is not None and layer.bias.requires_grad:
            norms[layer.bias] = g
        return norms


_register_linear_norm_sampler()


def _norm_pass_inputs(model: nn.Module) -> list[torch.Tensor]:
    """What ghost clipping's first backward pass must reach so that every layer's hook sees its backprops.

    That pass only measures the per-sample norms (its gradients are discarded): the weight gradient of a
    Linear or Embedding layer with a trainable bias is not needed for it (its norm comes from activations
    and backprops, and its bias keeps the layer on the pass), so it is left out, which saves one weight
    gradient per such layer; every other parameter is kept.
    """
    cached = getattr(model, "_fedemo_norm_pass_inputs", None)
    if cached is None:
        ghost_norm = tuple(getattr(model, "NORM_SAMPLERS", {}))
        skipped = {id(m.weight) for m in model.modules()
                   if type(m) in ghost_norm and getattr(m, "bias", None) is not None and m.bias.requires_grad}
        cached = [p for p in model.parameters() if p.requires_grad and id(p) not in skipped]
        model._fedemo_norm_pass_inputs = cached
    return cached


def needs_empty_batch_step(model: nn.Module) -> bool:
    """Whether an empty Poisson batch cannot go through ``model``: torch's expanded weights ("ew") refuse
    a batch of 0; ``empty_batch_step`` takes the step instead."""
    from opacus.grad_sample.gsm_exp_weights import GradSampleModuleExpandedWeights

    return isinstance(model, GradSampleModuleExpandedWeights)


def empty_batch_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The DP-SGD step of an empty batch without a forward pass: no per-sample gradients (what the hooks
    mode records for an empty batch), so the optimizer's update is the noise alone."""
    optimizer.zero_grad(set_to_none=True)
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()


def sole_trained_linear(model: nn.Module) -> nn.Linear | None:
    """The one ``nn.Linear`` that holds every trainable parameter of ``model`` (a linear head on fixed
    features, e.g. face_scatter and voice_stats), or None when anything else is trained."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for module in model.modules():
        if type(module) is nn.Linear and trainable and {id(p) for p in module.parameters(recurse=False)
                                                         if p.requires_grad} == trainable:
            return module
    return None


class LinearHeadCapture:
    """The input and output of a model's only trained Linear layer in the latest forward pass.

    Ghost clipping of such a model needs no module hooks: each sample's gradient is that layer's
    backprop times its input, so one ``autograd.grad`` to the layer's output gives every per-sample
    norm, and one matrix product the clipped sum. Opacus's hooks (a ``BackwardHookFunction`` around the
    layer, a norm-measuring backward and a second, weighted one) made face_scatter's DP step 1.65x its
    non-private twin's; without them it is about 1.45x, of which Opacus's noise (81k draws) is the largest
    part (simulations/benchmarks/dp_cost.py, shared 2-core machine). These two forward hooks (one on the
    model, which forgets the previous pass, one on the layer) cost a few microseconds. Both sit on the model Opacus wraps, so a forward of that
    model outside the wrapper forgets too and nothing accumulates.
    """

    def __init__(self, model: nn.Module, layer: nn.Linear) -> None:
        self.layer = layer
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        model.register_forward_pre_hook(self._forget)
        layer.register_forward_hook(self._record)

    def _forget(self, module, args) -> None:
        self.calls.clear()

    def _record(self, module, args, output) -> None:
        if module.training and torch.is_grad_enabled():
            self.calls.append((args[0].detach(), output))

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one call of this forward pass; a layer called twice (weight tying) or not at all fails."""
        calls, self.calls = self.calls, []
        if len(calls) != 1:
            raise RuntimeError(f"the trained Linear layer ran {len(calls)} times in one training forward pass, "
                               "not once: its per-sample gradients cannot be clipped from one call")
        return calls[0]


def _use_linear_head_clipping(private_model: nn.Module) -> None:
    """Ghost clipping without Opacus's hooks for a model whose only trained layer is one Linear.

    Opacus's hooks are removed through its own ``remove_hooks`` and a ``LinearHeadCapture`` takes their
    place; ``GhostClippingLoss.backward`` then clips from it (``_clip_linear_head``). The optimizer (noise
    from the secret generator, scaling, accounting) and the Poisson loader stay Opacus's. Any other model
    keeps Opacus's two-pass ghost clipping.
    """
    layer = sole_trained_linear(private_model._module)
    if layer is None:
        return
    private_model.remove_hooks()
    private_model._fedemo_linear_head = LinearHeadCapture(private_model._module, layer)


def _linear_per_sample_norms(layer: nn.Linear, activations: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient norm over the layer's trainable weight and bias jointly (Opacus's rules:
    ||g_i a_i^T|| = ||g_i|| ||a_i|| and ||g_i|| for one row per sample, so jointly ||g_i|| sqrt(||a_i||^2 + 1);
    its ghost-norm einsum for sequences)."""
    weight = layer.weight.requires_grad
    bias = layer.bias is not None and layer.bias.requires_grad
    if backprops.dim() == 2:
        g = torch.linalg.vector_norm(backprops, dim=1)
        if not weight:
            return g
        a = torch.linalg.vector_norm(activations.to(backprops.dtype), dim=1)
        return g * (torch.hypot(a, a.new_ones(())) if bias else a)
    from opacus.grad_sample.linear import compute_linear_norm_sample

    norms = compute_linear_norm_sample(layer, [activations], backprops)
    return torch.stack([n for p, n in norms.items() if p.requires_grad]).norm(2, dim=0)


def _clip_linear_head(model: nn.Module, optimizer: torch.optim.Optimizer, loss_per_sample: torch.Tensor) -> None:
    """``.grad`` = the sum over the batch of each sample's gradient clipped to ``max_grad_norm``: what
    Opacus's two ghost passes leave, from one ``autograd.grad`` to the layer's output and one matrix product.

    Each loss term depends on its own sample's output row only (no layer mixes samples under DP-SGD), so the
    gradient of the summed per-sample loss with respect to the output is every sample's backprop; the
    clipping factor is Opacus's, min(1, C / (norm + 1e-6)).
    """
    capture: LinearHeadCapture = model._fedemo_linear_head
    layer = capture.layer
    activations, output = capture.take()
    (backprops,) = torch.autograd.grad(loss_per_sample.sum(), output)
    norms = _linear_per_sample_norms(layer, activations, backprops)
    coef = (model.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    clipped = (backprops * coef.view(-1, *([1] * (backprops.dim() - 1)))).reshape(-1, layer.out_features)
    optimizer.zero_grad(set_to_none=True)
    if layer.weight.requires_grad:
        layer.weight.grad = clipped.t() @ activations.reshape(-1, layer.in_features).to(clipped.dtype)
    if layer.bias is not None and layer.bias.requires_grad:
        layer.bias.grad = clipped.sum(0)


@functools.cache
def _ghost_clipping_loss_class() -> type:
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    class GhostClippingLoss(DPTensorFastGradientClipping):
        def backward(self) -> None:
            if hasattr(self.module, "_fedemo_linear_head"):  # a linear head: one pass, no hooks
                _clip_linear_head(self.module, self.optimizer, self.loss_per_sample)
                return
            if uses_book_keeping(self.module):  # Linear, Conv2d and GroupNorm layers: one pass, no hooks
                book_keeping_backward(self.module, self.optimizer, self.loss_per_sample)
                return
            # Opacus's backward, with the first (norm-measuring) pass restricted to what it needs, and
            # every norm cleared first: a layer whose hook did not fire fails loudly, never clips with
            # the last step's norms.
            inputs = _norm_pass_inputs(self.module)
            for p in self.module.trainable_parameters:
                p._norm_sample = None
            torch.autograd.backward(self.loss_per_sample.mean(0), inputs=inputs, retain_graph=True)
            missing = [n for n, p in self.module.named_parameters() if p.requires_grad and p._norm_sample is None]
            if missing:
                raise RuntimeError(f"ghost clipping measured no per-sample norm for {missing}")
            self.optimizer.zero_grad()
            coeff = self.module.get_clipping_coef()
            second_loss = torch.sum(coeff.to(self.loss_per_sample.device) * self.loss_per_sample)
            self.module.disable_hooks()
            try:
                second_loss.backward()
            finally:
                self.module.enable_hooks()

    return GhostClippingLoss


def ghost_clipping_loss(model: nn.Module, optimizer: torch.optim.Optimizer, loss_per_sample: torch.Tensor):
    """Opacus's two-pass loss for ghost clipping: ``.backward()`` leaves the sum of the clipped per-sample
    gradients in ``.grad``, as the hooks mode's clipping does; the optimizer then adds the noise."""
    return _ghost_clipping_loss_class()(model, optimizer, loss_per_sample, loss_reduction="mean")


def steps_taken(engine: PrivacyEngine) -> int:
    """DP-SGD steps the engine's accountant counted this round (each a noisy release)."""
    return int(sum(steps for _, _, steps in engine.accountant.history))
