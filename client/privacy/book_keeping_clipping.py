"""Book-keeping (BK) per-sample clipping for models of Linear, Conv2d and GroupNorm layers, without Opacus's hooks.

Bu et al., "Differentially private optimization on large model at small cost" (ICML 2023): DP-SGD needs each
sample's gradient norm and the sum of the clipped gradients, and both follow from each trained layer's input
(activations) and the gradient of its output (backprops), which one backward pass to the layers' *outputs* gives
for every layer at once. No weight gradient of the ordinary backward pass, no per-sample gradient of a Linear
layer, no second (weighted) backward pass as in Opacus's ghost clipping:

1. forward hooks record each trained layer's input (detached) and output (``BookKeepingCapture``);
2. one ``torch.autograd.grad(loss_per_sample.sum(), outputs)`` gives every layer's backprops; each loss term
   depends on its own sample's rows only (no layer mixes samples under DP-SGD: GroupNorm, never BatchNorm), so
   row i of a backprop is sample i's;
3. per-sample norms, jointly over every trained parameter: Linear by ghost norms (||g_i|| ||a_i|| for the
   weight, ||g_i|| for the bias; Opacus's ``compute_linear_norm_sample`` for 3-D inputs); Conv2d from its
   per-sample weight gradients (client/privacy/per_sample_grads.py's grouped-convolution rule, Opacus's for what that
   one does not cover); GroupNorm from its per-sample gradients (B x channels, Opacus's rule); clipping factor
   Opacus's, min(1, C / (norm + 1e-6));
4. the clipped sums: Linear (c G)^T A (one matrix product) and sum(c G); Conv2d and GroupNorm c^T (per-sample
   gradients) (a matrix-vector product over what step 3 already computed; measured cheaper than a second
   convolution weight gradient from c-scaled backprops);
5. ``.grad`` = those sums; Opacus's DPOptimizerFastGradientClipping then adds the noise (from the secret
   generator), scales by the expected batch size and accounts, unchanged.

Only models whose every trainable parameter is the weight or bias of an ``nn.Linear``, ``nn.Conv2d`` or
``nn.GroupNorm`` (exact types) are taken: ``install_book_keeping`` refuses anything else, which then keeps
Opacus's path; a trained layer that ran other than once in a training forward pass, or whose input or output was
modified in place after it ran, fails the step instead of clipping a wrong gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from client.privacy.per_sample_grads import conv2d_grad_sample

__all__ = ["BookKeepingCapture", "book_keeping_backward", "book_keeping_layers", "install_book_keeping",
           "uses_book_keeping"]

_SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm)
_ATTR = "_fedemo_book_keeping"


def _trainable(layer: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in layer.parameters(recurse=False) if p.requires_grad]


def book_keeping_layers(model: nn.Module) -> list[nn.Module] | None:
    """The layers holding ``model``'s trainable parameters, or None when any trainable parameter is not the
    weight or bias of an exact ``nn.Linear``, ``nn.Conv2d`` or ``nn.GroupNorm`` (or nothing is trained)."""
    layers, covered = [], set()
    for module in model.modules():
        own = _trainable(module)
        if not own:
            continue
        if type(module) not in _SUPPORTED:
            return None
        if {id(p) for p in own} - {id(getattr(module, "weight", None)), id(getattr(module, "bias", None))}:
            return None  # a parameter registered on the layer beyond its weight and bias
        if type(module) is nn.Conv2d and isinstance(module.padding, str) and module.padding_mode != "zeros":
            return None  # neither per-sample rule is exact there
        if covered & {id(p) for p in own}:
            return None  # a parameter shared between layers (tying): no one layer's capture gives its gradient
        layers.append(module)
        covered.update(id(p) for p in own)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not layers or covered != trainable:
        return None
    return layers


class BookKeepingCapture:
    """Each trained layer's input (detached) and output in the latest training forward pass.

    One forward pre-hook on the model forgets the previous pass; one forward hook per trained layer records
    (only in training mode with gradients enabled, as a DP step runs). ``take`` checks that every layer ran once
    and that nothing it recorded was modified in place since (which would make the backprops or the recomputed
    normalisation those of other values).
    """

    def __init__(self, model: nn.Module, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.calls: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor, int, int]]] = {m: [] for m in layers}
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


def install_book_keeping(private_model: nn.Module) -> bool:
    """Replace Opacus's ghost-clipping hooks of ``private_model`` (a GradSampleModuleFastGradientClipping from
    ``make_private(..., grad_sample_mode="ghost")``) by a ``BookKeepingCapture``. Returns whether the model now
    clips by book-keeping (True also when it already did); False, and nothing changed, when the model has a layer
    type this path does not cover, or already clips a linear head without hooks."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    if hasattr(private_model, _ATTR):
        return True
    if not isinstance(private_model, GradSampleModuleFastGradientClipping):
        return False
    if hasattr(private_model, "_fedemo_linear_head"):
        return False
    layers = book_keeping_layers(private_model._module)
    if layers is None:
        return False
    private_model.remove_hooks()
    setattr(private_model, _ATTR, BookKeepingCapture(private_model._module, layers))
    return True


def uses_book_keeping(model: nn.Module) -> bool:
    return hasattr(model, _ATTR)


def _view(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return coef.view(-1, *([1] * (like.dim() - 1)))


def _linear(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor):
    """Squared per-sample norm over the layer's trained parameters, and a function of the clipping factors
    that sets their clipped sums."""
    weight = layer.weight.requires_grad
    bias = layer.bias is not None and layer.bias.requires_grad
    a = a.to(g.dtype)
    if g.dim() == 2:
        sq = g.square().sum(1)
        if weight:
            sq = sq * (a.square().sum(1) + 1.0) if bias else sq * a.square().sum(1)
    else:
        from opacus.grad_sample.linear import compute_linear_norm_sample

        norms = compute_linear_norm_sample(layer, [a], g)
        sq = sum(n.square() for n in norms.values())

    def clipped(coef: torch.Tensor) -> None:
        cg = (g * _view(coef, g)).reshape(-1, layer.out_features)
        if weight:
            layer.weight.grad = cg.t() @ a.reshape(-1, layer.in_features)
        if bias:
            layer.bias.grad = cg.sum(0)

    return sq, clipped


def _per_sample(layer: nn.Module, grads: dict):
    """From per-sample gradients {param: (B, *shape)}: squared norms and the c-weighted sums."""
    flat = {p: gs.reshape(gs.shape[0], -1) for p, gs in grads.items() if p.requires_grad}
    sq = sum(f.square().sum(1) for f in flat.values())

    def clipped(coef: torch.Tensor) -> None:
        for p, f in flat.items():
            p.grad = (coef.to(f.dtype) @ f).view_as(p)

    return sq, clipped


def _conv2d(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor):
    return _per_sample(layer, conv2d_grad_sample(layer, [x], g))


def _group_norm(layer: nn.GroupNorm, x: torch.Tensor, g: torch.Tensor):
    grads = {}
    if layer.weight is not None and layer.weight.requires_grad:
        normalized = F.group_norm(x.to(g.dtype), layer.num_groups, eps=layer.eps)
        grads[layer.weight] = (normalized * g).flatten(2).sum(2)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.flatten(2).sum(2)
    return _per_sample(layer, grads)


_RULES = {nn.Linear: _linear, nn.Conv2d: _conv2d, nn.GroupNorm: _group_norm}


def book_keeping_backward(private_model: nn.Module, optimizer: torch.optim.Optimizer,
                          loss_per_sample: torch.Tensor) -> None:
    """``.grad`` of every trainable parameter = the sum over the batch of each sample's gradient (of its term of
    ``loss_per_sample``, all trainable parameters jointly) clipped to ``private_model.max_grad_norm``, from one
    ``autograd.grad`` to the trained layers' outputs; ``optimizer.step()`` then noises, scales and accounts."""
    capture: BookKeepingCapture = getattr(private_model, _ATTR)
    taken = capture.take()
    optimizer.zero_grad(set_to_none=True)
    if loss_per_sample.numel() == 0:  # an empty Poisson batch: every clipped sum is zero, the step is noise alone
        for layer in capture.layers:
            for p in _trainable(layer):
                p.grad = torch.zeros_like(p)
        return
    outputs = [out for _, _, out in taken]
    backprops = torch.autograd.grad(loss_per_sample.sum(), outputs, allow_unused=True)
    total, setters = None, []
    for (layer, x, out), g in zip(taken, backprops):
        if g is None:  # the layer's output does not reach the loss: its gradient is zero for every sample
            g = torch.zeros_like(out)
        sq, clipped = _RULES[type(layer)](layer, x, g)
        total = sq if total is None else total + sq
        setters.append(clipped)
    coef = (private_model.max_grad_norm / (total.sqrt() + 1e-6)).clamp(max=1.0)
    for clipped in setters:
        clipped(coef)
