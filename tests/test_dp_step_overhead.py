"""The cheaper DP-SGD step paths (simulations/benchmarks/dp_cost.py) against brute force.

Ghost clipping of a model whose only trained layer is one Linear (face_scatter, voice_stats: heads on fixed
features) runs without Opacus's module hooks (``client.privacy.dp_training.LinearHeadCapture``): one ``autograd.grad``
to the layer's output and one matrix product. Its clipped sum must equal per-sample gradients from plain
autograd, one sample at a time, each clipped to C over all trainable parameters jointly, summed; on batches of
varying size, an empty one among them, with per-sample loss weights, a frozen or missing bias, a frozen weight,
3-D (sequence) inputs. Its noise must keep the std z x C / expected batch size and come from the secret
generator, and every step must be accounted. A model with anything else trained keeps Opacus's hooks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.privacy.book_keeping_clipping import uses_book_keeping
from client.privacy.dp_training import DPPlan, make_private, sole_trained_linear, steps_taken
from client.local_training import train_epochs
from shared_models.models.registry import build_model, model_task
from shared_models.models.scatter_models import NUM_FEATURES

C = 1e-3  # far below every per-sample gradient norm here: every sample is clipped
CPU = torch.device("cpu")


def _reference_clipped_sum(model: nn.Module, batch, n_inputs: int, clip: float):
    """Sum of each sample's gradient (all trainable parameters jointly), clipped to ``clip`` with Opacus's
    factor, each from its own forward and backward pass; and the per-sample norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    labels = batch[n_inputs]
    weights = batch[n_inputs + 2] if len(batch) > n_inputs + 2 else None
    model.train()
    for i in range(len(labels)):
        logits = model(*(t[i:i + 1] for t in batch[:n_inputs]))
        loss = nn.functional.cross_entropy(logits, labels[i:i + 1])
        if weights is not None:
            loss = loss * weights[i]
        grads = torch.autograd.grad(loss, params)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        for t, g in zip(total, grads):
            t.add_(g, alpha=min(1.0, clip / (norm + 1e-6)))
        norms.append(norm)
    return total, norms


def _private(model: nn.Module, data: TensorDataset, *, z: float = 0.0, clip: float = C, mode: str = "ghost"):
    loader = DataLoader(data, batch_size=4)
    return make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), loader,
                        DPPlan(z, 1 / len(loader), 1, clip), accountant="rdp", grad_sample_mode=mode)


def _batches(data: TensorDataset, sizes) -> list[tuple[torch.Tensor, ...]]:
    """Consecutive batches of the given sizes (one empty, as Opacus's Poisson loader may yield)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [tuple(t[start:start + size] for t in data.tensors) for start, size in zip(starts, sizes)]


def _check_against_brute_force(model: nn.Module, data: TensorDataset, batches, n_inputs: int = 1) -> None:
    reference = copy.deepcopy(model)
    private, optimizer, _, engine = _private(model, data)
    assert hasattr(private, "_fedemo_linear_head")  # the hook-free path is the one under test
    trainable = [p for p in private.parameters() if p.requires_grad]
    for batch in batches:
        reference.load_state_dict(private._module.state_dict())
        expected, norms = _reference_clipped_sum(reference, batch, n_inputs, C)
        assert all(norm > 10 * C for norm in norms), norms  # every sample is clipped
        before = [p.detach().clone() for p in trainable]
        train_epochs(private, [batch], optimizer, epochs=1, n_inputs=n_inputs, device=CPU, private=True)
        got = [(b - p.detach()) * optimizer.expected_batch_size for b, p in zip(before, trainable)]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=C * 1e-3, rtol=1e-3)
    assert steps_taken(engine) == len(batches)  # the empty batch too


def _rows(n: int, width: int, *, seed: int = 1, weighted: bool = False, steps: int | None = None) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    shape = (n, width) if steps is None else (n, steps, width)
    fields = [torch.randn(*shape, generator=g), torch.randint(0, 7, (n,), generator=g), torch.zeros(n, 2)]
    if weighted:
        fields.append(torch.rand(n, generator=g) + 0.5)
    return TensorDataset(*fields)


def _voice_clips(n: int, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(6).unsqueeze(0) < torch.randint(1, 7, (n, 1), generator=g)
    return TensorDataset(torch.randn(n, 6, 128, 32, generator=g), mask, torch.randint(0, 7, (n,), generator=g),
                         torch.zeros(n, 2))


@pytest.mark.parametrize("name", ["face_scatter", "voice_stats"])
def test_linear_head_models_clip_without_opacus_hooks(name):
    torch.manual_seed(0)
    model = build_model(name, dropout=0.0)
    data = (_rows(8, NUM_FEATURES) if model_task(name) == "face" else _voice_clips(8))
    private, *_ = _private(model, data)
    head = sole_trained_linear(private._module)
    assert head is model.head
    assert hasattr(private, "_fedemo_linear_head")
    assert not head._backward_hooks and not getattr(private, "autograd_grad_sample_hooks", None)


def test_models_with_more_than_a_head_take_book_keeping_or_keep_opacus_hooks():
    torch.manual_seed(0)
    model = build_model("face_cnn", dropout=0.0)  # Linear, Conv2d and GroupNorm: client/privacy/book_keeping_clipping.py
    data = TensorDataset(torch.rand(8, 1, 48, 48), torch.randint(0, 7, (8,)), torch.zeros(8, 2))
    private, *_ = _private(model, data)
    assert sole_trained_linear(model) is None
    assert not hasattr(private, "_fedemo_linear_head") and uses_book_keeping(private)
    normed = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 7))  # a LayerNorm: neither path
    private, *_ = _private(normed, TensorDataset(torch.rand(8, 6), torch.randint(0, 7, (8,)), torch.zeros(8, 2)))
    assert not hasattr(private, "_fedemo_linear_head") and not uses_book_keeping(private)
    assert private.autograd_grad_sample_hooks


def test_voice_stats_under_ghost_matches_brute_force():
    torch.manual_seed(0)
    data = _voice_clips(13)
    _check_against_brute_force(build_model("voice_stats", dropout=0.0), data, _batches(data, (5, 1, 0, 7)), n_inputs=2)


@pytest.mark.parametrize("weighted", [False, True])
def test_face_scatter_under_ghost_matches_brute_force(weighted):
    torch.manual_seed(0)
    data = _rows(13, NUM_FEATURES, weighted=weighted)
    _check_against_brute_force(build_model("face_scatter", dropout=0.0), data, _batches(data, (0, 6, 1, 6)))


class _Head(nn.Module):
    """A fixed front end (a frozen Linear and a nonlinearity) and one trained Linear."""

    def __init__(self, *, bias: bool = True, freeze: str | None = None, sequence: bool = False) -> None:
        super().__init__()
        self.front = nn.Linear(5, 6)
        self.front.requires_grad_(False)
        self.head = nn.Linear(6, 7, bias=bias)
        if freeze:
            getattr(self.head, freeze).requires_grad_(False)
        self.sequence = sequence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.tanh(self.front(x)))
        return out.mean(1) if self.sequence else out


@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"freeze": "bias"}, {"freeze": "weight"},
                                    {"sequence": True}, {"sequence": True, "bias": False}])
def test_hand_built_heads_match_brute_force(kwargs):
    torch.manual_seed(0)
    model = _Head(**kwargs)
    data = _rows(12, 5, steps=4 if kwargs.get("sequence") else None)
    _check_against_brute_force(model, data, _batches(data, (4, 0, 6, 2)))


class _TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head(x))


def test_a_head_called_twice_fails_instead_of_clipping_one_call():
    torch.manual_seed(0)
    private, optimizer, _, _ = _private(_TiedHead(), _rows(8, 7))
    batch = (torch.randn(3, 7), torch.randint(0, 7, (3,)), torch.zeros(3, 2))
    with pytest.raises(RuntimeError, match="2 times"):
        train_epochs(private, [batch], optimizer, epochs=1, n_inputs=1, device=CPU, private=True)


@pytest.mark.parametrize("empty", [True, False])
def test_noise_of_the_hook_free_path_has_std_z_c_over_expected_batch_size(empty):
    """The noise alone on an empty batch, or a noise so large the clipped sum vanishes next to it."""
    z, clip = (1.3, 0.7) if empty else (1000.0, 0.7)
    torch.manual_seed(0)
    model = build_model("voice_stats", dropout=0.0)
    data = _voice_clips(16)
    torch.manual_seed(0)  # what the run's seed would fix: it must not fix the noise
    private, optimizer, _, engine = _private(model, data, z=z, clip=clip)
    batch = tuple(t[:0] if empty else t[:4] for t in data.tensors)
    updates = []
    for _ in range(12):
        before = [p.detach().clone() for p in private.parameters() if p.requires_grad]
        train_epochs(private, [batch], optimizer, epochs=1, n_inputs=2, device=CPU, private=True)
        after = [p.detach() for p in private.parameters() if p.requires_grad]
        updates.append(torch.cat([(b - a).flatten() for b, a in zip(before, after)]))
    updates = torch.cat(updates)
    expected = z * clip / optimizer.expected_batch_size
    assert optimizer.expected_batch_size == 4 and steps_taken(engine) == 12
    assert optimizer.generator is not None and optimizer.generator is not torch.default_generator
    assert abs(float(updates.std()) / expected - 1) < 0.05


@pytest.mark.parametrize("name", ["voice_stats", "face_scatter"])
def test_node_mode_on_opacus_poisson_batches_matches_brute_force(name):
    """The node's own mode (``dp_grad_sample_mode``, ghost for both heads) on batches of the real secret Poisson
    loader, whose sizes vary."""
    torch.manual_seed(0)
    model = build_model(name, dropout=0.0)
    assert model.dp_grad_sample_mode == "ghost"
    data = _voice_clips(24) if name == "voice_stats" else _rows(24, NUM_FEATURES)
    sampler_model = build_model(name, dropout=0.0)
    _, _, dp_loader, _ = make_private(sampler_model, torch.optim.SGD(sampler_model.parameters()),
                                      DataLoader(data, batch_size=6), DPPlan(0.0, 0.25, 1, C), accountant="rdp")
    batches = list(dp_loader) + list(dp_loader)
    assert len({len(b[0]) for b in batches}) > 1  # sizes vary
    _check_against_brute_force(model, data, batches, n_inputs=2 if name == "voice_stats" else 1)
