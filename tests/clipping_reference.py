"""The brute-force reference for per-sample clipping, shared by the DP-SGD tests (no Opacus in the reference).

Each sample's gradient from its own forward and backward pass with plain autograd, clipped to C over all
trainable parameters jointly with Opacus's factor min(1, C / (norm + 1e-6)), summed; ``check_steps`` runs the
node's DP step (``make_private`` + ``train_epochs``, no noise, SGD at lr 1) on batches of varying size, an empty
one among them, and compares its update with that sum.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.local_training import train_epochs
from client.privacy.dp_training import DPPlan, make_private
from client.privacy.node_runtime import start_node_runtime
from shared_models.models.registry import MODELS, build_model, model_task
from shared_models.models.scatter_models import NUM_FEATURES

C = 1e-3  # far below every per-sample gradient norm of these models: every sample is clipped
CPU = torch.device("cpu")
N_INPUTS = {"face": 1, "voice": 2, "fusion": 3}


def model(name: str, va: bool = False) -> nn.Module:
    """Model ``name`` without dropout (the per-sample loop must see the same net as the batch)."""
    torch.manual_seed(0)
    kwargs = {"dropout": 0.0} if "dropout" in inspect.signature(MODELS[name].constructor).parameters else {}
    return build_model(name, valence_arousal=va, **kwargs)


def n_inputs(name: str) -> int:
    return N_INPUTS[model_task(name)]


def dataset(name: str, n: int, *, weighted: bool = False, seed: int = 1) -> TensorDataset:
    """A node's kind of data for model ``name``: fixed features (face_scatter), faces, or log-mel clips + mask
    (some with a leading padded segment), both for fusion; then labels, valence/arousal, optional weights."""
    g = torch.Generator().manual_seed(seed)
    task = model_task(name)
    inputs: tuple = ()
    if name == "face_scatter":  # a node trains on the fixed features (client.data.fixed_features)
        inputs = (torch.randn(n, NUM_FEATURES, generator=g),)
    elif task in ("face", "fusion"):
        inputs = (torch.rand(n, 1, 48, 48, generator=g),)
    if task in ("voice", "fusion"):
        mask = torch.arange(6).unsqueeze(0) < torch.randint(1, 7, (n, 1), generator=g)
        mask[::3, 0] = False  # a leading padded segment: the model reorders real segments to the front
        mask[::3, 5] = True
        inputs = (*inputs, torch.randn(n, 6, 128, 32, generator=g), mask)
    fields = (*inputs, torch.randint(0, 7, (n,), generator=g), torch.rand(n, 2, generator=g) * 2 - 1)
    if weighted:
        fields = (*fields, torch.rand(n, generator=g) + 0.5)
    return TensorDataset(*fields)


def batches(data: TensorDataset, sizes=(5, 1, 0, 7)) -> list[tuple[torch.Tensor, ...]]:
    """Consecutive batches of the given sizes (one empty), as Opacus's Poisson loader yields them."""
    out, start = [], 0
    for size in sizes:
        out.append(tuple(t[start:start + size] for t in data.tensors))
        start += size
    return out


def clipped_sum(net: nn.Module, batch, n_in: int, clip: float, va_weight: float = 1.0):
    """Sum over the batch of each sample's gradient (all trainable parameters jointly) clipped to ``clip``, each
    from its own forward and backward pass; and each sample's gradient norm."""
    params = [p for p in net.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    labels, va = batch[n_in], batch[n_in + 1]
    weights = batch[n_in + 2] if len(batch) > n_in + 2 else None
    net.train()
    for i in range(len(labels)):
        out = net(*(t[i:i + 1] for t in batch[:n_in]))
        logits, va_pred = out if isinstance(out, tuple) else (out, None)
        loss = nn.functional.cross_entropy(logits, labels[i:i + 1])
        if weights is not None:
            loss = loss * weights[i]
        if va_pred is not None:
            loss = loss + va_weight * nn.functional.mse_loss(va_pred, va[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        for t, g in zip(total, grads):
            t.add_(g, alpha=min(1.0, clip / (norm + 1e-6)))
        norms.append(norm)
    return total, norms


def private(net: nn.Module, data, *, z: float = 0.0, clip: float = C, clipping: str | None = None,
            batch_size: int = 4):
    start_node_runtime()  # as a DP node does before it trains: Opacus's hooks then use the segment layers' rules
    loader = DataLoader(data, batch_size=batch_size)
    return make_private(net, torch.optim.SGD(net.parameters(), lr=1.0), loader, DPPlan(z, 1 / len(loader), 1, clip),
                        accountant="rdp", clipping=clipping)


def check_steps(net: nn.Module, data: TensorDataset, steps, n_in: int, *, clipping: str | None = None,
                va_weight: float = 1.0, atol: float = C * 5e-3):
    """The node's DP step (``train_epochs`` on ``make_private``'s step, no noise, SGD at lr 1) on each batch of
    ``steps`` against ``clipped_sum``; every step, the empty one too, accounted. Returns the private step."""
    reference = copy.deepcopy(net)
    dp = private(net, data, clipping=clipping)
    trainable = [p for p in dp.model.parameters() if p.requires_grad]
    for batch in steps:
        reference.load_state_dict(dp.module.state_dict())
        expected, norms = clipped_sum(reference, batch, n_in, C, va_weight)
        assert all(norm > 10 * C for norm in norms), norms  # every sample is clipped
        before = [p.detach().clone() for p in trainable]
        train_epochs(dp.model, [batch], dp.optimizer, epochs=1, n_inputs=n_in, device=CPU, va_weight=va_weight,
                     private=dp)
        got = [(b - p.detach()) * dp.optimizer.expected_batch_size for b, p in zip(before, trainable)]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=atol, rtol=1e-3)
        if norms:
            total_norm = float(torch.sqrt(sum((e.double() ** 2).sum() for e in expected)))
            assert 0 < total_norm <= len(norms) * C * (1 + 1e-5)
    assert dp.steps_taken() == len(steps)
    return dp
