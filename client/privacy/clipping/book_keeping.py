"""Book-keeping per-sample clipping (Bu et al., ICML 2023), without Opacus's hooks or a second backward pass.

Forward hooks record each trained layer's input and output; one ``autograd.grad`` of the summed per-sample loss
to those outputs gives every layer's backprops (row i is sample i's: no layer mixes samples under DP-SGD); the
layer rules (layer_rules.py) give each sample's norm, jointly over all trained parameters, and the clipped sums,
written to ``.grad`` for Opacus's optimizer to noise, scale and account, or added, already scaled, into this
step's noise where the optimizer drew it first (grad_sums.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from client.privacy.clipping.layer_rules import RULES

__all__ = ["BookKeepingCapture", "book_keeping_layers", "clip_and_sum"]


def _trainable(layer: nn.Module) -> list[nn.Parameter]:
    return [p for p in layer.parameters(recurse=False) if p.requires_grad]


def book_keeping_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers holding ``model``'s trainable parameters, or None when book-keeping cannot clip it: a trained
    layer of a type without a rule (exact types), a parameter other than a layer's weight and bias, a parameter
    shared between layers, or nothing trained."""
    layers, covered = [], set()
    for module in model.modules():
        own = _trainable(module)
        if not own:
            continue
        if type(module) not in RULES:
            return None
        if {id(p) for p in own} - {id(getattr(module, "weight", None)), id(getattr(module, "bias", None))}:
            return None
        if type(module) is nn.Conv2d and isinstance(module.padding, str) and module.padding_mode != "zeros":
            return None  # neither per-sample convolution rule is exact there
        if covered & {id(p) for p in own}:
            return None
        layers.append(module)
        covered.update(id(p) for p in own)
    if not layers or covered != {id(p) for p in model.parameters() if p.requires_grad}:
        return None
    return layers


class BookKeepingCapture:
    """Each trained layer's input (detached) and output in the latest training forward pass.

    A forward pre-hook on the model forgets the previous pass; a forward hook per layer records (in training
    mode with gradients enabled). ``take`` checks that every layer ran once and that nothing recorded was
    modified in place since.
    """

    def __init__(self, model: nn.Module, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.calls: dict[nn.Module, list] = {m: [] for m in layers}
        self.handles = [model.register_forward_pre_hook(self._forget)]
        self.handles += [layer.register_forward_hook(self._record) for layer in layers]

    def _forget(self, module, args) -> None:
        for calls in self.calls.values():
            calls.clear()

    def _record(self, module, args, output) -> None:
        if module.training and torch.is_grad_enabled():
            x = args[0]
            self.calls[module].append((x.detach(), output, x._version, output._version))

    def take(self) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
        taken = []
        for layer in self.layers:
            calls, self.calls[layer] = self.calls[layer], []
            if len(calls) != 1:
                raise RuntimeError(f"the trained layer {layer} ran {len(calls)} times in one training forward pass, "
                                   "not once: its per-sample gradients cannot be clipped from one call")
            x, out, x_version, out_version = calls[0]
            if x._version != x_version or out._version != out_version:
                raise RuntimeError(f"the input or output of {layer} was modified in place after it ran: "
                                   "book-keeping clipping needs them as they were")
            taken.append((layer, x, out))
        return taken

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def clip_and_sum(capture: BookKeepingCapture, loss_per_sample: torch.Tensor, max_grad_norm: float,
                 factor: float = 1.0) -> None:
    """``.grad`` of every trained parameter = ``factor`` x the sum over the batch of each sample's gradient (of its
    loss term, all trained parameters jointly) clipped to ``max_grad_norm`` with Opacus's factor
    min(1, C / (norm + 1e-6)); added to ``.grad`` where it is not None (this step's noise)."""
    taken = capture.take()
    if loss_per_sample.numel() == 0:  # an empty Poisson batch: every clipped sum is zero, the step is noise alone
        for layer in capture.layers:
            for p in _trainable(layer):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        return
    backprops = torch.autograd.grad(loss_per_sample, [out for _, _, out in taken],  # d(sum of the terms) / d(out)
                                    grad_outputs=torch.ones_like(loss_per_sample), allow_unused=True)
    total, setters, calls = None, [], []
    for (layer, x, out), g in zip(taken, backprops):
        if g is None:  # the layer's output does not reach the loss: its gradient is zero for every sample
            g = torch.zeros_like(out)
        sq, clipped = RULES[type(layer)](layer, x, g)
        total = sq if total is None else total + sq
        setters.append(clipped)
        calls.append((layer, x, g))
    # A non-finite value in a sample's layer input or output gradient makes its squared norm non-finite (IEEE:
    # NaN and inf propagate, 0 x inf is NaN), and a non-finite norm makes the batch's sum of them non-finite: one
    # reduction read back (a sum of finite norms that overflows only takes the exact per-sample path below).
    if not math.isfinite(float(total.sum())):
        finite = torch.isfinite(total)
        if not bool(finite.all()):
            _clip_without_non_finite(calls, _clip_factors(total, max_grad_norm, factor), finite)
            return
    coef = _clip_factors(total, max_grad_norm, factor)
    for clipped in setters:
        clipped(coef)


def _clip_factors(total: torch.Tensor, max_grad_norm: float, factor: float = 1.0) -> torch.Tensor:
    """Opacus's factors min(1, C / (norm + 1e-6)) from the squared norms ``total`` (a fresh sum: taken in place),
    with one true division as Opacus computes them; times ``factor``, taken into C and the bound (exact where
    ``factor`` is a power of two, as 1 / batch size often is; else within a rounding)."""
    return torch.div(max_grad_norm * factor, total.sqrt_().add_(1e-6)).clamp_(max=factor)


def _clip_without_non_finite(calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]], coef: torch.Tensor,
                             finite: torch.Tensor) -> None:
    """The clipped sums with each sample whose gradient is not finite (a NaN input, an overflow inside the
    network) counted as a zero gradient: 0 x NaN would make the whole sum, and the released model, NaN, which
    reveals the sample. A zero is within C, so the replace-one bound of 2C holds."""
    bad = ~finite
    for _, x, g in calls:
        bad |= ~torch.isfinite(x).flatten(1).all(1) | ~torch.isfinite(g).flatten(1).all(1)
    coef = coef.masked_fill(bad, 0.0)
    for layer, x, g in calls:
        rows = bad.view(-1, *[1] * (x.dim() - 1))
        x = torch.where(rows, torch.zeros((), dtype=x.dtype), x)
        g = torch.where(bad.view(-1, *[1] * (g.dim() - 1)), torch.zeros((), dtype=g.dtype), g)
        RULES[type(layer)](layer, x, g)[1](coef)
