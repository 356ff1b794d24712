"""Vectorised clients: the local training of many clients of one model as one batched computation.

The clients' parameters are stacked (``torch.func.stack_module_state``) and one ``vmap``-ed step trains every
client with its own optimiser state; short clients are masked, so each client's result equals its sequential
``train_epochs`` one (tests/test_vectorised_clients.py). Used by the local backend's groups
(``vectorised-clients``, simulations/engine/client_groups.py) and the engine benchmark. This step is non-DP
(``refuse_dp``): under DP-SGD the groups batch each node's private step in simulations/engine/vectorised_dp.py.
Details: docs/design_notes.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from shared_models import messages as msgs
from shared_models.models.voice_models import ccc_loss

DP_REFUSAL = ("this batched step does not run DP-SGD (no per-sample clipping, no noise): DP nodes train through "
              "simulations/engine/vectorised_dp.py, each with its own private step and secret generator")


# Clients per batched computation on a CPU. vmap turns each client's convolutions into one grouped convolution
# and every elementwise op into one over all clients' activations: with many clients these leave the caches
# and run at memory speed (the engine benchmark's compute floor shows the same for one model on large batches).
CPU_GROUP_CLIENTS = 4


@dataclass(frozen=True)
class OptimiserSpec:
    """The local optimiser ``make_optimizer`` builds (torch's defaults for what the settings leave out)."""

    kind: str  # "adam" | "sgd"
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam only
    eps: float = 1e-8  # adam only


def optimiser_spec(settings) -> OptimiserSpec:
    """The run settings' local optimiser (``optimizer``, ``learning-rate``, ``momentum``, ``weight-decay``)."""
    return OptimiserSpec(kind=settings.optimizer, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                         momentum=settings.momentum if settings.optimizer == "sgd" else 0.0)


def refuse_dp(dp: bool) -> None:
    """Vectorised clients train without DP only (the module docstring says why)."""
    if dp:
        raise ValueError(DP_REFUSAL)


def epoch_batches(loader, epochs: int) -> list[tuple]:
    """Every batch ``train_epochs`` would take from ``loader`` over ``epochs`` epochs, in order."""
    return [tuple(batch) for _ in range(epochs) for batch in loader if len(batch[0]) > 0]


def _masked_ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``ccc_loss`` over the rows where ``mask`` is 1 (padding rows carry no weight in any moment)."""
    w = mask[:, None]
    n = mask.sum().clamp(min=1.0)
    mp, mt = (pred * w).sum(0) / n, (target * w).sum(0) / n
    dp, dt = pred - mp, target - mt
    cov, vp, vt = (dp * dt * w).sum(0) / n, (dp * dp * w).sum(0) / n, (dt * dt * w).sum(0) / n
    return 1.0 - (2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)).mean()


def pad_rows(t: torch.Tensor, size: int) -> torch.Tensor:
    """Rows 0..n-1, then copies of them up to ``size`` (finite values, never zeros a model could divide by)."""
    return t if len(t) == size else t[torch.arange(size) % len(t)]


class _Stepper:
    """One batched optimiser over stacked parameters, with per-client state and an active mask per step."""

    def __init__(self, spec: OptimiserSpec, params: dict[str, torch.Tensor], clients: int) -> None:
        if spec.kind not in ("adam", "sgd"):
            raise ValueError(f"vectorised clients: unknown optimizer {spec.kind!r} (adam | sgd)")
        self.spec = spec
        self.steps = torch.zeros(clients, dtype=torch.float64)
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()} if spec.kind == "adam" else {}

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        s = self.spec
        self.steps += active.to(self.steps.dtype).cpu()
        if s.kind == "adam":
            b1, b2 = s.betas
            bc1 = 1 - b1 ** self.steps.clamp(min=1)
            step_size = (s.lr / bc1).to(active.device)  # float64 like torch's Python floats; cast per parameter
            bc2_sqrt = (1 - b2 ** self.steps.clamp(min=1)).sqrt().to(active.device)
        for name, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            on = active.view(shape)
            g = grads[name] if s.weight_decay == 0 else grads[name] + s.weight_decay * p
            if s.kind == "adam":
                m = torch.where(on, self.m[name].lerp(g, 1 - b1), self.m[name])
                v = torch.where(on, self.v[name] * b2 + (1 - b2) * g * g, self.v[name])
                denom = v.sqrt() / bc2_sqrt.view(shape).to(p.dtype) + s.eps
                update = p - step_size.view(shape).to(p.dtype) * m / denom
                self.m[name], self.v[name] = m, v
            elif s.momentum:
                buf = torch.where(on, self.m[name] * s.momentum + g, self.m[name])  # torch: buf = g at step 1
                update = p - s.lr * buf
                self.m[name] = buf
            else:
                update = p - s.lr * g
            p.copy_(torch.where(on, update, p))


def group_size_for(device: torch.device | str, clients: int, group_size: int | None = None) -> int:
    """How many clients one batched computation holds: ``group_size`` if given, else all of them on a GPU and
    ``CPU_GROUP_CLIENTS`` on a CPU (where a larger group's activations outgrow the caches)."""
    if group_size is not None and group_size < 1:
        raise ValueError(f"vectorised clients: group size {group_size} (need 1 or more)")
    size = group_size or (clients if torch.device(device).type == "cuda" else CPU_GROUP_CLIENTS)
    return max(1, min(size, clients))


def train_clients(model: nn.Module | Sequence[nn.Module], client_batches: Sequence[Sequence[tuple]],
                  spec: OptimiserSpec, *, n_inputs: int, device: torch.device, va_weight: float = 1.0,
                  group_size: int | None = None) -> list[tuple[dict[str, torch.Tensor], dict[str, float]]]:
    """Train one copy of ``model`` per client, all at once; ``client_batches[c]`` is client c's batch sequence.

    ``model`` holds the global weights (left unchanged), or is a list of one model per client (same architecture
    and buffers) holding each client's starting weights. Returns, per client, its state dict after training and
    its metrics as ``train_epochs`` reports them (mean loss, samples seen). The clients are trained in groups of
    ``group_size_for(device, ...)``, one batched computation each (every client's result is the same).
    """
    clients = len(client_batches)
    size = group_size_for(device, clients, group_size)
    if size < clients:
        many = not isinstance(model, nn.Module)
        return [result for start in range(0, clients, size)
                for result in train_clients(list(model)[start:start + size] if many else model,
                                            client_batches[start:start + size], spec, n_inputs=n_inputs,
                                            device=device, va_weight=va_weight, group_size=size)]
    starts = [model] * clients if isinstance(model, nn.Module) else list(model)
    if len(starts) != clients:
        raise ValueError(f"vectorised clients: {len(starts)} models for {clients} clients")
    model = starts[0].to(device)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = {**{k: b.detach() for k, b in model.named_buffers()}, **frozen}
    stacked, _ = stack_module_state([m.to(device) for m in starts])
    params = {k: v.detach().clone().contiguous() for k, v in stacked.items() if k in trainable}
    stepper = _Stepper(spec, params, clients)

    def loss_fn(p, inputs, labels, va, weights, mask):
        out = functional_call(model, (p, buffers), inputs)
        logits, va_pred = out if isinstance(out, tuple) else (out, None)
        ce = nn.functional.cross_entropy(logits, labels, reduction="none")
        loss = (ce * weights * mask).sum() / mask.sum().clamp(min=1.0)
        if va_pred is not None:
            loss = loss + va_weight * _masked_ccc_loss(va_pred, va, mask)
        return loss

    batched = vmap(grad_and_value(loss_fn), in_dims=(0, 0, 0, 0, 0, 0), randomness="different")
    model.train()
    loss_sums, seen = [0.0] * clients, [0] * clients
    for t in range(max((len(b) for b in client_batches), default=0)):
        rows = max(len(b[t][n_inputs]) for b in client_batches if t < len(b))
        fields, masks, active = [], [], []
        for c, batches in enumerate(client_batches):
            on = t < len(batches)
            batch = batches[t] if on else next(b[t] for b in client_batches if t < len(b))  # shape filler, weight 0
            n = len(batch[n_inputs])
            weights = batch[n_inputs + 2] if len(batch) > n_inputs + 2 else torch.ones(n)
            fields.append([pad_rows(x, rows) for x in (*batch[:n_inputs + 2], weights)])
            masks.append((torch.arange(rows) < n).float() * on)
            active.append(on)
            if on:
                seen[c] += n
        stacked_fields = [torch.stack(column).to(device, non_blocking=True) for column in zip(*fields)]
        inputs = tuple(stacked_fields[:n_inputs])
        labels, va, weights = stacked_fields[n_inputs:]
        mask = torch.stack(masks).to(device)
        grads, losses = batched(params, inputs, labels, va.float(), weights.float(), mask)
        on = torch.tensor(active, device=device)
        stepper.step(params, grads, on)
        counts = mask.sum(1).cpu()
        for c, loss in enumerate(losses.detach().cpu().tolist()):
            loss_sums[c] += loss * float(counts[c])
    results = []
    for c in range(clients):
        state = {k: (params[k][c].detach().clone() if k in params else v.detach().clone())
                 for k, v in model.state_dict().items()}
        results.append((state, {msgs.TRAIN_LOSS: loss_sums[c] / max(seen[c], 1), msgs.TRAIN_SAMPLES: float(seen[c])}))
    return results

