"""The DP optimizers a node steps: Opacus's, with the Gaussian noise of every trained parameter drawn in one flat
draw from a secret generator, and without per-step work whose result is already at hand.

``make_private`` (client/privacy/dp_training.py) swaps Opacus's optimizer for one of these, keeping its wrapped
optimizer, noise multiplier, clipping bound, expected batch size and the accountant's step hook. The mechanism is
Opacus's: the clipped sum in ``p.summed_grad``, ``add_noise`` (it becomes the noised ``p.grad``), ``scale_grad``
by the expected batch size (on the book-keeping path both in one pass, ``noise_and_scale``, unless a wrapper
replaced one of them), the accountant's hook, the wrapped optimizer's step. Opacus's secure mode (torchcsprng)
keeps Opacus's own ``add_noise``. This is also the Opacus seam: every non-public Opacus name
FedEmo touches is listed here and used only here (tests/test_opacus_seam.py; upstream fix: docs/upstream.md).
"""

from __future__ import annotations

import secrets

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping

from client.privacy.secret_gaussian import SecretGaussian

__all__ = ["BookKeepingDPOptimizer", "HooksDPOptimizer", "SecretNoise", "secret_generator", "with_secret_noise",
           "trained_module"]

# Opacus 1.6's non-public names used here and nowhere else: (module, name) imported, and members read, set or
# called on Opacus's own objects (DPOptimizer and its subclasses, GradSampleModule).
PRIVATE_NAMES = (("opacus.optimizers.optimizer", "_check_processed_flag"),
                 ("opacus.optimizers.optimizer", "_mark_as_processed"))
PRIVATE_MEMBERS = (("opacus.optimizers.optimizer", "DPOptimizer", "_check_skip_next_step"),
                   ("opacus.optimizers.optimizer", "DPOptimizer", "_is_last_step_skipped"),
                   ("opacus.grad_sample.grad_sample_module", "GradSampleModule", "_module"))
OPTIONAL_MEMBERS = ("_adjusted_noise_multiplier",)  # read with getattr and a default: Opacus sets it only sometimes


def trained_module(private_model: torch.nn.Module) -> torch.nn.Module:
    """The model inside Opacus's wrapper (``GradSampleModule``): what a node trains and sends."""
    return private_model._module


def secret_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from the OS CSPRNG: nothing the coordinator sends or knows determines it."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(64))


_AHEAD_DRAWS, _AHEAD_ELEMENTS = 32, 1 << 21  # draws made back to back: at most 32, and 8 MB of float32 at once


class SecretNoise:
    """Unit Gaussian draws for all of a list of parameters at once (one flat tensor per step), never from torch's
    global generator, which a run's seed fixes. On the CPU from ``SecretGaussian`` (an AES-256-CTR keystream keyed
    from the OS CSPRNG, client/privacy/secret_gaussian.py): cryptographically secure, and faster than torch's
    Mersenne Twister normal; on an accelerator from a torch generator (``generator``, or one of its own) seeded
    from the OS CSPRNG on the parameters' device.

    On the CPU, once told how many draws are still to come (``expect``: the round's steps), a draw also makes the
    next ones, back to back, while their code and buffers are warm (up to 32 draws and 8 MB at once: a small
    model's whole round): after a step's own work the first draw costs about twice one made right after another.
    Each is the draw it would have been (the same calls on the same stream, in order), handed out once; none is
    made beyond the expected count, and a draw at another scale drops them."""

    def __init__(self, params: list[torch.Tensor], generator: torch.Generator | None = None) -> None:
        self.device, self.dtype = params[0].device, params[0].dtype
        self.size = sum(p.numel() for p in params)
        if self.device.type == "cpu":
            self.generator: SecretGaussian | torch.Generator = SecretGaussian()
        else:
            self.generator = generator if generator is not None else secret_generator(self.device)
        self._expected = 0  # draws still to come, as far as known (0: unknown, so none is made ahead)
        self._ahead: list[torch.Tensor] = []  # draws made ahead, the next one last
        self._ahead_std = 0.0

    @staticmethod
    def covers(params: list[torch.Tensor]) -> bool:
        """One flat draw needs one device and one floating dtype for every parameter."""
        return (bool(params) and len({(p.device, p.dtype) for p in params}) == 1
                and params[0].dtype.is_floating_point)

    def expect(self, draws: int) -> None:
        """``draws`` more draws will be asked for (a round's DP steps), so up to that many may be made ahead."""
        self._expected = max(0, int(draws))

    def draw(self, std: float = 1.0) -> torch.Tensor:
        """A new N(0, std^2) vector with one entry per parameter element (the scale taken inside the draw)."""
        if not isinstance(self.generator, SecretGaussian):
            return torch.empty(self.size, device=self.device, dtype=self.dtype).normal_(0.0, std,
                                                                                        generator=self.generator)
        if not self._ahead or self._ahead_std != std:
            count = max(1, min(self._expected, _AHEAD_DRAWS, _AHEAD_ELEMENTS // max(self.size, 1)))
            self._ahead = [self.generator.normal_(torch.empty(self.size, dtype=self.dtype), std)
                           for _ in range(count)][::-1]
            self._ahead_std = std
        self._expected = max(0, self._expected - 1)
        return self._ahead.pop()


class _FlatSecretNoise:
    """``add_noise`` from one flat secret draw (mixed into both Opacus optimizers below), ``scale_grad`` as one
    operation on that draw (or both in one pass), and ``zero_grad`` without the wrapped optimizer's call."""

    noise: SecretNoise | None = None
    _noised: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # this step's flat draw and the grads viewing it
    _noised_first: list[torch.Tensor] | None = None  # the grads ``noise_first`` set this step (the sums go into them)
    _clears_grad_sample = True  # Opacus's DPOptimizer.zero_grad also drops per-sample gradients

    def _noise_std(self) -> float:
        """The Gaussian's standard deviation before scaling: noise multiplier x clipping bound, as Opacus takes them."""
        return getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier) * self.max_grad_norm

    def _batch_scale(self) -> float:
        """What the noised sum is divided by: the expected batch size (times accumulated steps) for a mean loss."""
        return self.expected_batch_size * self.accumulated_iterations if self.loss_reduction == "mean" else 1

    def _one_pass_allowed(self) -> bool:
        """Whether noise and scaling may take one flat draw in one pass: outside secure mode, with a flat draw, and
        neither ``add_noise`` nor ``scale_grad`` replaced on this instance (the privacy audit wraps ``add_noise``)."""
        return not (self.secure_mode or self.noise is None or {"add_noise", "scale_grad"} & vars(self).keys())

    def add_noise(self) -> None:
        """Contract (kept for anything that wraps this method on the instance, e.g. the privacy audit): every
        trained ``p`` holds its clipped sum in ``p.summed_grad``; afterwards ``p.grad`` is a new tensor,
        ``p.summed_grad`` + N(0, (noise_multiplier x max_grad_norm)^2) per element, shaped like ``p``, and
        ``p.summed_grad`` is left unchanged (marked processed, as Opacus does). The new gradients are views into this
        step's one flat draw, each noise element turned into its gradient element in place (nothing else holds the
        draw)."""
        params = self.params
        self._noised = None
        if self.secure_mode or self.noise is None:
            return super().add_noise()
        std = self._noise_std()
        for p in params:
            _check_processed_flag(p.summed_grad)
        flat = self.noise.draw()
        offset, grads = 0, []
        for p in params:
            grad = flat[offset:offset + p.numel()].view_as(p)
            torch.add(p.summed_grad.view_as(p), grad, alpha=std, out=grad)  # summed + std x N(0, 1)
            p.grad = grad
            grads.append(grad)
            offset += p.numel()
            _mark_as_processed(p.summed_grad)
        self._noised = (flat, grads)

    def noise_and_scale(self) -> None:
        """``add_noise`` then ``scale_grad``, as Opacus's step takes them. Where neither is replaced on this instance
        (the privacy audit wraps ``add_noise``) and one flat draw covers every parameter, in one pass fewer: each
        ``p.grad`` = ``p.summed_grad`` / s + N(0, (std / s)^2), s the expected batch size (1 for a summed loss):
        the same Gaussian mechanism, its scale taken inside the draw instead of a division afterwards."""
        if not self._one_pass_allowed():
            self.add_noise()
            self.scale_grad()
            return
        params = self.params
        scale = self._batch_scale()
        std = self._noise_std()
        for p in params:
            _check_processed_flag(p.summed_grad)
        flat = self.noise.draw(std / scale)
        offset = 0
        for p in params:
            grad = flat[offset:offset + p.numel()].view_as(p)
            grad.add_(p.summed_grad.view_as(p), alpha=1.0 / scale)
            p.grad = grad
            offset += p.numel()
            _mark_as_processed(p.summed_grad)

    def scale_grad(self) -> None:
        """Opacus's ``scale_grad``; when every ``p.grad`` is still this step's view of the flat draw, one division
        of the draw instead of one per parameter (the same division of the same elements)."""
        noised, self._noised = self._noised, None
        if (self.loss_reduction == "mean" and noised is not None
                and all(p.grad is g for p, g in zip(self.params, noised[1], strict=True))):
            noised[0].div_(self.expected_batch_size * self.accumulated_iterations)
            return
        super().scale_grad()

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Opacus's ``zero_grad``; with ``set_to_none`` the wrapped optimizer's gradients are set to None here, as its
        own ``zero_grad(set_to_none=True)`` does, without that call (a node's step clears twice what it trains)."""
        self._noised_first = None
        if not set_to_none:
            return super().zero_grad(set_to_none)
        for p in self.params:
            if self._clears_grad_sample:
                p.grad_sample = None
            if not self._is_last_step_skipped:
                p.summed_grad = None
        for group in self.original_optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        return None


class HooksDPOptimizer(_FlatSecretNoise, DPOptimizer):
    """Opacus's DPOptimizer (it clips the per-sample gradients its hooks computed), noised by ``SecretNoise``."""

    def clip_and_accumulate(self) -> None:
        """Opacus's clipping, a sample whose gradient is not finite counted as zero first: its factor
        C / (NaN + 1e-6), or 0 x inf, would make the whole sum NaN, and the released model would reveal it."""
        samples = self.grad_samples
        if samples and len(samples[0]):
            # a row's sum is not finite if any of its values is not (or if it overflows: then its norm is
            # inf and its factor 0 anyway, so zeroing it changes nothing)
            bad = ~torch.isfinite(torch.stack([g.reshape(len(g), -1).sum(1) for g in samples]).sum(0))
            if bool(bad.any()):
                for p, g in zip(self.params, samples):
                    p.grad_sample = g.masked_fill(bad.view(-1, *[1] * (g.dim() - 1)), 0.0)
        super().clip_and_accumulate()


class BookKeepingDPOptimizer(_FlatSecretNoise, DPOptimizerFastGradientClipping):
    """Opacus's ghost-clipping optimizer for book-keeping clipping, which leaves the clipped sum in ``.grad``:
    ``pre_step`` moves it to ``summed_grad`` (no copy: ``add_noise`` writes a new ``.grad``) instead of Opacus's
    per-parameter deepcopy, then noises and scales (``noise_and_scale``) and calls the accountant's hook as Opacus
    does. A node's step (client/privacy/private_step.py) draws the noise first instead (``noise_first``), and the
    clipping adds the scaled sums into it."""

    _clears_grad_sample = False  # as Opacus's DPOptimizerFastGradientClipping.zero_grad

    def noise_first(self) -> float | None:
        """The step's noise before its clipped sums, so that clipping adds them into it (book-keeping: the sums
        then need no buffer and no pass of their own): each trained ``p.grad`` becomes its view of this step's flat
        draw, N(0, (std / s)^2) per element (s the expected batch size; 1 for a summed loss), and the factor 1 / s
        the clipped sums must be added with is returned; ``step`` then releases ``p.grad`` as it is (the same
        Gaussian mechanism as ``noise_and_scale``: p.summed_grad / s + N(0, (std / s)^2)), calling the accountant's
        hook as Opacus does. None, and nothing set, where this optimizer must take Opacus's order instead: secure
        mode, no flat draw, ``add_noise`` or ``scale_grad`` replaced on the instance (the privacy audit), or a
        step being accumulated (Opacus's skipped steps). Call it after ``zero_grad``."""
        if not self._one_pass_allowed() or self._is_last_step_skipped or self._check_skip_next_step(pop_next=False):
            return None
        params = self.params
        if any(p.grad is not None or getattr(p, "summed_grad", None) is not None for p in params):
            raise ValueError("noise_first: call zero_grad first (a gradient of this step is already there)")
        scale = self._batch_scale()
        std = self._noise_std()
        flat = self.noise.draw(std / scale)
        grads = [view.view_as(p) for p, view in zip(params, flat.split([p.numel() for p in params]), strict=True)]
        for p, grad in zip(params, grads):
            p.grad = grad
        self._noised_first = grads
        return 1.0 / scale

    def _take_noised_first(self) -> bool:
        """Whether this step's grads came from ``noise_first`` (then already noised and scaled); raises if one was
        replaced since: releasing it would release a gradient without its noise."""
        grads, self._noised_first = self._noised_first, None
        if grads is None:
            return False
        if not all(p.grad is g for p, g in zip(self.params, grads, strict=True)):
            raise RuntimeError("a gradient was replaced after noise_first drew this step's noise into it: "
                               "releasing it would skip the noise")
        return True

    def pre_step(self, closure=None) -> bool:
        if self._take_noised_first():  # the clipped sums went into this step's noise (noise_first): released as is
            if self.step_hook:
                self.step_hook(self)
            self._is_last_step_skipped = False
            return True
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad, p.grad = p.grad, None
            else:  # a skipped step's sum accumulates (Opacus's virtual steps)
                p.summed_grad.add_(p.grad)
                p.grad = None
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.noise_and_scale()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True


def with_secret_noise(optimizer: DPOptimizer) -> DPOptimizer:
    """Opacus's ``optimizer`` (from ``PrivacyEngine.make_private``) as the matching class above, with the same
    wrapped optimizer, settings, generator and accountant hook; outside secure mode, a ``SecretNoise`` whenever one
    flat draw covers every trained parameter (on an accelerator on that secret generator, or on a secret one of
    its own where Opacus had none)."""
    classes = {DPOptimizerFastGradientClipping: BookKeepingDPOptimizer, DPOptimizer: HooksDPOptimizer}
    if type(optimizer) not in classes:
        raise TypeError(f"no secret-noise variant of {type(optimizer).__name__}")
    cls = classes[type(optimizer)]
    fast = cls(optimizer.original_optimizer, noise_multiplier=optimizer.noise_multiplier,
               max_grad_norm=optimizer.max_grad_norm, expected_batch_size=optimizer.expected_batch_size,
               loss_reduction=optimizer.loss_reduction, generator=optimizer.generator,
               secure_mode=optimizer.secure_mode)
    fast.attach_step_hook(optimizer.step_hook)
    params = fast.params
    if not optimizer.secure_mode and SecretNoise.covers(params):
        fast.noise = SecretNoise(params, optimizer.generator)  # on an accelerator, without one, a secret one
        if isinstance(fast.noise.generator, torch.Generator):
            fast.generator = fast.noise.generator
    if fast.generator is None and not optimizer.secure_mode:  # Opacus's own draws (none when noised above): secret
        fast.generator = secret_generator(params[0].device if params else "cpu")
    return fast
