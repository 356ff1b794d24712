"""DP-SGD's step in every Opacus mode against an independent brute-force reference (no Opacus in the reference).

For each model in the Opacus mode a node uses (``dp_grad_sample_mode``), and for the other modes worth covering
(ghost clipping on the sequence model, on the CNN, on hand-built layers with ``bias=False``, frozen weights or
biases, 3-D inputs), the clipped sum of a noiseless DP step must equal: per-sample gradients from plain autograd,
one sample at a time, each clipped to C over all parameters jointly, summed. C is small enough that every sample
is clipped (a wrong clipping factor would show) and the batches vary in size, as Poisson batches do (including an
empty one). The noise must have std noise_multiplier x C / expected batch size in every mode, come from secret
generators (not from torch's global seed, which the run's seed fixes), and every step must be accounted.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.privacy.dp_training import DPPlan, default_grad_sample_mode, make_private, steps_taken
from client.local_training import train_epochs
from shared_models.models.registry import build_model, model_task
from shared_models.models.scatter_models import NUM_FEATURES

# The mode each model declares, as a node trains it (read from the models, so the tests follow a change of mode).
NODE_MODES = {name: default_grad_sample_mode(build_model(name)) for name in ("face_scatter", "face_cnn", "voice_stats",
                                                                           "voice_crnn")}
C = 1e-3  # far below every per-sample gradient norm of these models: every sample is clipped
CPU = torch.device("cpu")


def _model(name: str, va: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, valence_arousal=va, dropout=0.0)  # no dropout: the per-sample loop must see the same net


def _dataset(name: str, n: int, *, weighted: bool = False, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    if name == "face_scatter":  # a node trains on the fixed features (client.data.fixed_features)
        inputs = (torch.randn(n, NUM_FEATURES, generator=g),)
    elif model_task(name) == "face":
        inputs = (torch.rand(n, 1, 48, 48, generator=g),)
    else:
        mask = torch.arange(6).unsqueeze(0) < torch.randint(1, 7, (n, 1), generator=g)
        mask[::3, 0] = False  # a leading padded segment: the model reorders real segments to the front
        mask[::3, 5] = True
        inputs = (torch.randn(n, 6, 128, 32, generator=g), mask)
    fields = (*inputs, torch.randint(0, 7, (n,), generator=g), torch.rand(n, 2, generator=g) * 2 - 1)
    if weighted:
        fields = (*fields, torch.rand(n, generator=g) + 0.5)
    return TensorDataset(*fields)


def _brute_force_clipped_sum(model: nn.Module, batch, n_inputs: int, clip: float, va_weight: float = 1.0):
    """Sum over the batch of each sample's gradient (all trainable parameters jointly) clipped to ``clip``,
    each from its own forward and backward pass with plain autograd; and each sample's gradient norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    labels, va = batch[n_inputs], batch[n_inputs + 1]
    weights = batch[n_inputs + 2] if len(batch) > n_inputs + 2 else None
    model.train()
    for i in range(len(labels)):
        out = model(*(t[i:i + 1] for t in batch[:n_inputs]))
        logits, va_pred = out if isinstance(out, tuple) else (out, None)
        loss = nn.functional.cross_entropy(logits, labels[i:i + 1])
        if weights is not None:
            loss = loss * weights[i]
        if va_pred is not None:
            loss = loss + va_weight * nn.functional.mse_loss(va_pred, va[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        factor = min(1.0, clip / (norm + 1e-6))  # Opacus's factor, with its 1e-6
        for t, g in zip(total, grads):
            t.add_(g, alpha=factor)
        norms.append(norm)
    return total, norms


def _check_steps_against_brute_force(model: nn.Module, data: TensorDataset, batches, n_inputs: int, mode: str,
                                     va_weight: float = 1.0) -> None:
    reference = copy.deepcopy(model)
    loader = DataLoader(data, batch_size=4)
    private, optimizer, _, engine = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader,
                                                 DPPlan(0.0, 1 / len(loader), 1, C), accountant="rdp",
                                                 grad_sample_mode=mode)
    trainable = [p for p in private.parameters() if p.requires_grad]
    clipped_some = False
    for batch in batches:
        reference.load_state_dict(private._module.state_dict())
        expected, norms = _brute_force_clipped_sum(reference, batch, n_inputs, C, va_weight)
        assert all(norm > 10 * C for norm in norms), norms  # every sample is clipped
        before = [p.detach().clone() for p in trainable]
        train_epochs(private, [batch], optimizer, epochs=1, n_inputs=n_inputs, device=CPU, va_weight=va_weight,
                     private=True)
        # SGD at lr 1 without noise: the update is the clipped sum over the expected batch size
        got = [(b - p.detach()) * optimizer.expected_batch_size for b, p in zip(before, trainable)]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=C * 1e-3, rtol=1e-3)
        clipped_some = clipped_some or len(norms) > 0
        if len(norms):
            total_norm = float(torch.sqrt(sum((e.double() ** 2).sum() for e in expected)))
            assert 0 < total_norm <= len(norms) * C * (1 + 1e-5)
    assert clipped_some
    assert steps_taken(engine) == len(batches)  # every batch, the empty one too, is an accounted step


def _poisson_like_batches(data: TensorDataset, sizes=(5, 1, 0, 7)):
    """Batches of varying size (one empty), as Opacus's Poisson loader yields them."""
    out, start = [], 0
    for size in sizes:
        out.append(tuple(t[start:start + size] for t in data.tensors))
        start += size
    return out


@pytest.mark.parametrize("name,mode,va,weighted", [
    *[(name, mode, False, False) for name, mode in NODE_MODES.items()],
    ("voice_crnn", "hooks", True, False),  # the valence/arousal head, in the node's mode
    ("face_scatter", "ghost", False, True),  # per-sample loss weights (refused under DP by run settings today)
    ("voice_crnn", "ghost", True, False),  # ghost norms of 3-D Linear inputs (SequenceLSTM, attention)
    ("face_cnn", "ghost", False, False),  # ghost: conv/GroupNorm per-sample gradients + Linear ghost norms
])
def test_dp_step_clips_each_sample_jointly_like_brute_force(name, mode, va, weighted):
    model = _model(name, va)
    n_inputs = 1 if model_task(name) == "face" else 2
    data = _dataset(name, 13, weighted=weighted)
    _check_steps_against_brute_force(model, data, _poisson_like_batches(data), n_inputs, mode)


def test_node_mode_steps_on_opacus_poisson_batches_match_brute_force():
    """The real secret Poisson loader (variable batch sizes), a few steps of voice_stats under expanded weights
    (whose per-sample scaling uses the actual batch size and the noise the expected one)."""
    model = _model("voice_stats")
    data = _dataset("voice_stats", 24)
    loader = DataLoader(data, batch_size=6)
    sampler_model = _model("voice_stats")
    _, _, dp_loader, _ = make_private(sampler_model, torch.optim.SGD(sampler_model.parameters()), loader,
                                      DPPlan(0.0, 0.25, 1, C), accountant="rdp")
    batches = list(dp_loader) + list(dp_loader)
    assert len({len(b[0]) for b in batches}) > 1  # sizes vary
    _check_steps_against_brute_force(model, data, batches, 2, "ew")


class _Toy(nn.Module):
    """Linear layers in the cases the ghost norm pass treats differently: no bias, frozen weight, frozen bias,
    3-D input (a sequence), a 2-D head with a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.seq_nobias = nn.Linear(5, 6, bias=False)  # 3-D input, no bias
        self.seq_bias = nn.Linear(6, 6)  # 3-D input, with bias: its weight gradient is skipped in the norm pass
        self.frozen_weight = nn.Linear(6, 6)
        self.frozen_weight.weight.requires_grad_(False)
        self.frozen_bias = nn.Linear(6, 6)
        self.frozen_bias.bias.requires_grad_(False)
        self.head = nn.Linear(6, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.seq_bias(torch.tanh(self.seq_nobias(x)))).mean(1)
        return self.head(torch.tanh(self.frozen_bias(torch.tanh(self.frozen_weight(h)))))


@pytest.mark.parametrize("mode", ["ghost", "hooks", "ew"])
def test_ghost_norm_pass_still_measures_every_linear(mode):
    torch.manual_seed(0)
    model = _Toy()
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(12, 4, 5, generator=g), torch.randint(0, 7, (12,), generator=g),
                         torch.zeros(12, 2))
    _check_steps_against_brute_force(model, data, _poisson_like_batches(data, (4, 0, 6, 2)), 1, mode)


# --------------------------------------------------------------------------- noise
def _noise_updates(name: str, mode: str, *, z: float, clip: float, empty: bool, steps: int = 2, seed: int = 0):
    """The parameter updates (SGD at lr 1) of ``steps`` DP steps; with ``empty`` on empty batches (the noise
    alone), else on full ones with a noise so large that the clipped sum is negligible next to it."""
    model = _model(name)
    data = _dataset(name, 16)
    loader = DataLoader(data, batch_size=4)
    torch.manual_seed(seed)  # what the run's seed would fix: it must not fix the noise
    private, optimizer, _, engine = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader,
                                                 DPPlan(z, 0.25, 1, clip), accountant="rdp", grad_sample_mode=mode)
    n_inputs = 1 if model_task(name) == "face" else 2
    batch = tuple(t[:0] if empty else t[:4] for t in data.tensors)
    updates = []
    trainable = [p for p in private.parameters() if p.requires_grad]
    for _ in range(steps):
        before = [p.detach().clone() for p in trainable]
        train_epochs(private, [batch], optimizer, epochs=1, n_inputs=n_inputs, device=CPU, private=True)
        updates.append(torch.cat([(b - p.detach()).flatten() for b, p in zip(before, trainable)]))
    assert steps_taken(engine) == steps
    assert optimizer.expected_batch_size == 4
    return torch.cat(updates)


@pytest.mark.parametrize("name,mode", [*NODE_MODES.items(), ("voice_stats", "hooks"), ("face_scatter", "hooks")])
@pytest.mark.parametrize("empty", [True, False])
def test_noise_std_is_z_times_c_over_expected_batch_size_in_every_mode(name, mode, empty):
    z, clip = (1.3, 0.7) if empty else (1000.0, 0.7)
    updates = _noise_updates(name, mode, z=z, clip=clip, empty=empty, steps=2 if name != "voice_stats" else 12)
    expected = z * clip / 4
    assert updates.numel() > 4000
    assert abs(float(updates.std()) / expected - 1) < 0.05
    assert abs(float(updates.mean())) < 5 * expected / updates.numel() ** 0.5


@pytest.mark.parametrize("name,mode", NODE_MODES.items())
def test_noise_and_poisson_masks_come_from_secret_generators_in_every_mode(name, mode):
    """Under the same torch global seed (which the coordinator's seed would fix) the noise differs between two
    runs, and so do the Poisson batches."""
    a = _noise_updates(name, mode, z=1.0, clip=1.0, empty=True, steps=1, seed=0)
    b = _noise_updates(name, mode, z=1.0, clip=1.0, empty=True, steps=1, seed=0)
    assert not torch.equal(a, b)

    def batches():
        data = _dataset(name, 40)
        torch.manual_seed(0)
        model = _model(name)
        _, optimizer, dp_loader, _ = make_private(model, torch.optim.SGD(model.parameters()),
                                                  DataLoader(data, batch_size=4), DPPlan(1.0, 0.1, 1, 1.0),
                                                  accountant="rdp", grad_sample_mode=mode)
        assert optimizer.generator is not None and optimizer.generator is not torch.default_generator
        assert dp_loader.batch_sampler.generator is not None
        torch.manual_seed(0)
        return [len(b[0]) for b in dp_loader], [b[-2].tolist() for b in dp_loader]

    assert batches() != batches()
