"""Vectorised DP-SGD: the per-sample clipping of many nodes' private steps as one batched computation.

Each node keeps its own ``PrivateStep`` (Poisson loader and noise on secret generators, plan from its own
ledger, optimizer, accountant); only the clipping is batched: each sample's gradient clipped to its node's
``max_grad_norm`` and summed per node, then the node's own optimizer noises, scales, accounts and steps exactly
as ``PrivateStep.step``. A sample whose gradient is not finite counts as zero, as in the loop path. Two exact
engines (tests/test_vectorised_dp.py): ghost norms for a trained ``nn.Linear`` output layer (face_scatter
family, voice_stats), ``torch.func`` per-sample gradients otherwise (face_cnn), chunked over nodes to at most
``CHUNK_ELEMENTS`` floats. Why and the memory bounds: docs/design_notes.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from client.privacy.dp_optimizer import BookKeepingDPOptimizer
from client.privacy.private_step import PrivateStep
from simulations.engine.vectorised_clients import pad_rows
from shared_models import messages as msgs

CHUNK_ELEMENTS = 2 ** 25


@dataclass
class PrivateClient:
    """One node's private training as the batched step takes it: its private step and its Poisson batches."""

    step: PrivateStep
    batches: list[tuple]


def private_batches(loader, epochs: int) -> list[tuple]:
    """Every Poisson batch ``train_epochs`` would take, in order; empty ones kept (each is a noised step)."""
    return [tuple(batch) for _ in range(epochs) for batch in loader]


def refusal(step: PrivateStep) -> str | None:
    """Why this node's private step cannot be batched here (None: it can)."""
    if type(step.optimizer) is not BookKeepingDPOptimizer:
        return (f"its DP optimizer is {type(step.optimizer).__name__}, not book-keeping's: the batched step "
                "writes each node's clipped sum for that optimizer to noise, scale and account")
    for module in step.module.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return "the model has active dropout: its draws would not be the node's own"
    return None


def _trained(module: nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if p.requires_grad]


def ghost_layer(template: nn.Module) -> str | None:
    """The name of the one trained ``nn.Linear`` (its weight trained) holding every trained parameter, or None."""
    names = set(_trained(template))
    for name, module in template.named_modules():
        own = {f"{name}.{k}" if name else k for k, p in module.named_parameters(recurse=False) if p.requires_grad}
        if own == names and type(module) is nn.Linear and module.weight.requires_grad:
            return name
    return None


def _stack_batches(batches: Sequence[tuple], n_inputs: int, device: torch.device):
    """Each node's batch padded to the longest: fields (inputs..., labels, va, weights) stacked, and the mask."""
    rows = max(len(b[n_inputs]) for b in batches)
    filler = next(b for b in batches if len(b[n_inputs]) == rows)  # an empty batch takes another's rows, weight 0
    fields, masks = [], []
    for batch in batches:
        n = len(batch[n_inputs])
        source = batch if n else filler
        fields.append([pad_rows(x, rows) for x in (*source[:n_inputs + 2], _field(source, n_inputs, 2))])
        masks.append((torch.arange(rows) < n).float())
    stacked = [torch.stack(column).to(device, non_blocking=True) for column in zip(*fields)]
    return stacked, torch.stack(masks).to(device)


def _coefficients(sq: torch.Tensor, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Opacus's clipping factor per sample and node, zero on padding rows."""
    return (clips[:, None] / (sq.sqrt() + 1e-6)).clamp(max=1.0) * mask


def _sample_losses(logits, va_pred, labels, va, weights, va_weight: float) -> torch.Tensor:
    """One loss term per sample, as ``train_epochs`` forms it under DP (CE x weight + va_weight x MSE)."""
    per = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    per = per.view(labels.shape) * weights
    if va_pred is not None:
        per = per + va_weight * nn.functional.mse_loss(va_pred, va, reduction="none").mean(-1)
    return per


class _Captured(Exception):
    """Stops a forward pass at the trained layer, carrying that layer's input."""

    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.x = x


def ghost_applies(template: nn.Module, layer: str, batch: tuple, n_inputs: int, device: torch.device) -> bool:
    """Whether the trained ``layer`` runs once, on a (rows, features) input, and its output is the model's output
    (checked once on a real batch: then each sample's loss depends on the layer's output row alone)."""
    seen: list = []
    handle = template.get_submodule(layer).register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        with torch.no_grad():
            out = template(*(t.to(device) for t in batch[:n_inputs]))
    finally:
        handle.remove()
    return len(seen) == 1 and seen[0][1] is out and seen[0][0].dim() == 2


def _ghost_sums(template: nn.Module, layer: str, steps: Sequence[PrivateStep], batches: Sequence[tuple],
                n_inputs: int, va_weight: float, device: torch.device):
    """Each node's clipped sum for the one trained Linear ``layer`` from its inputs a_i and output gradients g_i
    (no per-sample gradient): squared norm ||g_i||^2 (||a_i||^2 + [bias]), the sum (c_i g_i)^T a. The layer inputs
    (the fixed front end, run to the layer and stopped there) and the clipped sums are per node; the loss, its
    output gradients, norms and factors for all nodes' rows at once. No padding: an empty batch sums to zero."""
    head = template.get_submodule(layer)

    def stop(module, args):
        raise _Captured(args[0])

    handle = head.register_forward_pre_hook(stop)
    acts, weights, biases, trained_bias = [], [], [], []
    try:
        with torch.no_grad():
            for step, batch in zip(steps, batches):
                own = step.module.get_submodule(layer)
                weights.append(own.weight.detach())
                biases.append(own.bias.detach() if own.bias is not None else None)
                trained_bias.append(own.bias is not None and own.bias.requires_grad)
                inputs = tuple(t.to(device, non_blocking=True) for t in batch[:n_inputs])
                if len(batch[n_inputs]) == 0:
                    acts.append(None)
                    continue
                state = {**dict(step.module.named_parameters()), **dict(step.module.named_buffers())}
                try:
                    functional_call(template, state, inputs)
                except _Captured as captured:
                    acts.append(captured.x)
                else:
                    raise RuntimeError(f"vectorised DP: the trained layer {layer!r} did not run")
    finally:
        handle.remove()
    full = [i for i, a in enumerate(acts) if a is not None]
    sums = [{f"{layer}.weight": torch.zeros_like(w), **({f"{layer}.bias": torch.zeros_like(b)} if t else {})}
            for w, b, t in zip(weights, biases, trained_bias)]
    loss_sums = [0.0] * len(steps)
    if not full:
        return sums, loss_sums
    logits = torch.cat([nn.functional.linear(acts[i], weights[i], biases[i]) for i in full])
    logits = logits.detach().requires_grad_(True)
    rows = [len(acts[i]) for i in full]
    labels, va, sample_w = (torch.cat([_field(batches[i], n_inputs, f).to(device) for i in full])
                            for f in range(3))
    with torch.enable_grad():
        losses = _sample_losses(logits, None, labels, va, sample_w, va_weight)
        (g,) = torch.autograd.grad(losses.sum(), logits)
    a_sq = torch.cat([torch.linalg.vector_norm(acts[i].to(g.dtype), dim=1).square() for i in full])
    has_bias = torch.cat([torch.full((n,), float(trained_bias[i]), device=device) for n, i in zip(rows, full)])
    sq = torch.linalg.vector_norm(g, dim=1).square() * (a_sq + has_bias)
    clips = torch.cat([torch.full((n,), float(steps[i].max_grad_norm), device=device) for n, i in zip(rows, full)])
    bad = ~torch.isfinite(sq)  # a non-finite row of a_i or g_i makes its norm non-finite: counted as zero
    cg = g * (clips / (sq.sqrt() + 1e-6)).clamp(max=1.0).masked_fill(bad, 0.0)[:, None]
    any_bad = bool(bad.any())
    if any_bad:
        cg.masked_fill_(bad[:, None], 0.0)
    for i, part, loss, dropped in zip(full, cg.split(rows), losses.detach().split(rows), bad.split(rows)):
        a = acts[i].to(g.dtype)
        if any_bad:
            a = a.masked_fill(dropped[:, None], 0.0)
        sums[i][f"{layer}.weight"] = part.t() @ a
        if trained_bias[i]:
            sums[i][f"{layer}.bias"] = part.sum(0)
        loss_sums[i] = float(loss.sum())
    return sums, loss_sums


def _field(batch: tuple, n_inputs: int, which: int) -> torch.Tensor:
    """A batch's labels (0), valence/arousal (1) or per-sample loss weights (2; ones when it has none)."""
    if which < 2:
        return batch[n_inputs + which]
    return batch[n_inputs + 2] if len(batch) > n_inputs + 2 else torch.ones(len(batch[n_inputs]))


def _per_sample_sums(template, names, states, fields, mask, clips, n_inputs: int, va_weight: float):
    """Clipped sums from ``torch.func`` per-sample gradients (one per node and row), weighted by their factors."""
    params = {k: torch.stack([s[k] for s in states]) for k in names}
    fixed = {k: torch.stack([s[k] for s in states]) for k in states[0] if k not in params}

    def sample_loss(p, b, *row):
        out = functional_call(template, (p, b), tuple(x.unsqueeze(0) for x in row[:n_inputs]))
        logits, va_pred = out if isinstance(out, tuple) else (out, None)
        label, va, weight = (x.unsqueeze(0) for x in row[n_inputs:])
        return _sample_losses(logits, va_pred, label, va, weight, va_weight).sum()

    per_row = vmap(grad_and_value(sample_loss), in_dims=(None, None, *([0] * (n_inputs + 3))))
    grads, losses = vmap(per_row, in_dims=(0, 0, *([0] * (n_inputs + 3))))(params, fixed, *fields)
    padding = mask == 0
    for g in grads.values():  # exactly zero, whatever a padding row (another node's rows, for an empty batch) gave
        g.masked_fill_(padding.view(*padding.shape, *([1] * (g.dim() - 2))), 0.0)
    sq = sum(g.flatten(2).square().sum(2) for g in grads.values())
    bad = ~torch.isfinite(sq)  # a sample whose gradient is not finite counts as zero (within C: the 2C bound holds)
    for g in grads.values():
        g.masked_fill_(bad.view(*bad.shape, *([1] * (g.dim() - 2))), 0.0)
    coef = _coefficients(sq, clips, mask).masked_fill(bad, 0.0)
    sums = {k: torch.einsum("cr,cr...->c...", coef, g) for k, g in grads.items()}
    return sums, losses.detach().masked_fill(padding, 0.0)


def _apply(step: PrivateStep, sums: dict[str, torch.Tensor]) -> None:
    """The node's own DP step from its clipped sum: noise (its generator), scale, account, optimizer step."""
    step.optimizer.zero_grad(set_to_none=True)
    for name, p in step.module.named_parameters():
        if p.requires_grad:
            p.grad = sums[name].to(p.dtype)  # its own tensor or a view of this step's sums (never reused)
    step.optimizer.step()


def train_private_clients(template: nn.Module, clients: Sequence[PrivateClient], *, n_inputs: int,
                          device: torch.device, va_weight: float = 1.0) -> list[dict[str, float] | Exception]:
    """Train every node's private step on its batches, the clipping batched; returns, per node, its metrics as
    ``train_epochs`` reports them under DP, or the error its own training met (as alone: a step that fails for
    one node is retried node by node, and only the nodes whose own step fails stop). ``template`` is a model of
    the nodes' architecture without hooks (its own weights unused). The nodes' models hold their trained weights
    afterwards."""
    for client in clients:
        reason = refusal(client.step)
        if reason is not None:
            raise ValueError(f"vectorised DP: {reason}")
    template = template.to(device).train()
    if clients:  # the template trains what the nodes train (every node the same parameters)
        trained = [_trained(c.step.module) for c in clients]
        if any(t != trained[0] for t in trained):
            raise ValueError("vectorised DP: the nodes' models train different parameters")
        for name, p in template.named_parameters():
            p.requires_grad_(name in trained[0])
    names = _trained(template)
    layer = ghost_layer(template)
    sample = next((b for c in clients for b in c.batches if len(b[n_inputs])), None)
    if layer is not None and sample is not None and not ghost_applies(template, layer, sample, n_inputs, device):
        layer = None
    per_row = sum(p.numel() for p in template.parameters() if p.requires_grad)

    def clip(members: list[int], t: int) -> list[tuple[dict[str, torch.Tensor], float]]:
        steps = [clients[i].step for i in members]
        batches = [clients[i].batches[t] for i in members]
        if layer is not None:
            return list(zip(*_ghost_sums(template, layer, steps, batches, n_inputs, va_weight, device)))
        if not any(len(b[n_inputs]) for b in batches):  # all empty: each clipped sum zero, each step noise alone
            return [({k: torch.zeros_like(p) for k, p in s.module.named_parameters()}, 0.0) for s in steps]
        fields, mask = _stack_batches(batches, n_inputs, device)
        states = [{k: v.detach() for k, v in (*s.module.named_parameters(), *s.module.named_buffers())}
                  for s in steps]
        clips = torch.tensor([s.max_grad_norm for s in steps], device=device)
        sums, losses = _per_sample_sums(template, names, states, fields, mask, clips, n_inputs, va_weight)
        return [({k: v[j] for k, v in sums.items()}, total) for j, total in enumerate(losses.sum(1).cpu().tolist())]

    loss_sums, seen = [0.0] * len(clients), [0] * len(clients)
    failed: dict[int, Exception] = {}
    for t in range(max((len(c.batches) for c in clients), default=0)):
        active = [i for i, c in enumerate(clients) if t < len(c.batches) and i not in failed]
        rows = max((len(clients[i].batches[t][n_inputs]) for i in active), default=0)
        chunk = len(active) if layer is not None else max(1, CHUNK_ELEMENTS // max(1, rows * per_row))
        for start in range(0, len(active), max(chunk, 1)):
            members = active[start:start + chunk]
            for i, result in zip(members, _each_alone_on_failure(lambda ms: clip(ms, t), members)):
                if isinstance(result, Exception):
                    failed[i] = result
                    continue
                _apply(clients[i].step, result[0])
                loss_sums[i] += result[1]
                seen[i] += len(clients[i].batches[t][n_inputs])
    return [failed[i] if i in failed else
            {msgs.TRAIN_LOSS: loss_sums[i] / max(seen[i], 1), msgs.TRAIN_SAMPLES: float(seen[i])}
            for i in range(len(clients))]


def _each_alone_on_failure(clip, members: list[int]) -> list:
    """``clip(members)``; if it raises, each member's own ``clip([member])`` result or error (a node's failure is
    its own, as alone; nothing has stepped yet when a clipping computation raises)."""
    try:
        return clip(members)
    except Exception as err:  # noqa: BLE001 - located below, node by node
        if len(members) == 1:
            return [err]
    results = []
    for member in members:
        try:
            results.extend(clip([member]))
        except Exception as err:  # noqa: BLE001 - this node's own error
            results.append(err)
    return results
