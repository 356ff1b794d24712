"""Book-keeping clipping (client/privacy/book_keeping_clipping.py) against brute force, and its refusals.

A model made private under ghost clipping, then given ``install_book_keeping``, clips without Opacus's hooks
(one ``autograd.grad`` to the trained layers' outputs). Its clipped sum must equal per-sample gradients from plain
autograd, one sample at a time, each clipped to C over all trainable parameters jointly, summed
(test_dp_modes_bruteforce's reference), on batches of varying size, an empty one among them, and on the real
secret Poisson loader's batches; its noise must keep the std z x C / expected batch size from the secret
generator, and every step must be accounted. A model with any other trained layer type keeps Opacus's path.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_dp_modes_bruteforce import _brute_force_clipped_sum, _dataset, _model, _poisson_like_batches
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.privacy.book_keeping_clipping import book_keeping_backward, install_book_keeping, uses_book_keeping
from client.privacy.dp_training import DPPlan, make_private, steps_taken
from client.local_training import train_epochs

C = 1e-3  # far below every per-sample gradient norm here: every sample is clipped


def _private(model: nn.Module, data: TensorDataset, *, z: float = 0.0, clip: float = C, batch_size: int = 4):
    loader = DataLoader(data, batch_size=batch_size)
    private, optimizer, dp_loader, engine = make_private(
        model, torch.optim.SGD(model.parameters(), lr=1.0), loader, DPPlan(z, 1 / len(loader), 1, clip),
        accountant="rdp", grad_sample_mode="ghost")
    return private, optimizer, dp_loader, engine


def _step(private: nn.Module, optimizer, batch, n_inputs: int = 1) -> None:
    """One DP step as a node would take it: forward, the loss per sample (weighted when the batch carries
    weights), book-keeping backward, Opacus's noisy step."""
    private.train()
    optimizer.zero_grad(set_to_none=True)
    logits = private(*batch[:n_inputs])
    per_sample = nn.functional.cross_entropy(logits, batch[n_inputs], reduction="none")
    if len(batch) > n_inputs + 2:
        per_sample = per_sample * batch[n_inputs + 2]
    book_keeping_backward(private, optimizer, per_sample)
    optimizer.step()


def _check_against_brute_force(model: nn.Module, data: TensorDataset, batches, n_inputs: int = 1) -> None:
    reference = copy.deepcopy(model)
    private, optimizer, _, engine = _private(model, data)
    assert install_book_keeping(private) and uses_book_keeping(private)
    assert not getattr(private, "autograd_grad_sample_hooks", None)  # Opacus's hooks are gone
    trainable = [p for p in private.parameters() if p.requires_grad]
    for batch in batches:
        reference.load_state_dict(private._module.state_dict())
        expected, norms = _brute_force_clipped_sum(reference, batch, n_inputs, C)
        assert all(norm > 10 * C for norm in norms), norms
        before = [p.detach().clone() for p in trainable]
        _step(private, optimizer, batch, n_inputs)
        got = [(b - p.detach()) * optimizer.expected_batch_size for b, p in zip(before, trainable)]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=C * 5e-3, rtol=1e-3)  # float32 sums: CI once saw 1.26e-6
        for p in trainable:
            assert not hasattr(p, "grad_sample") or p.grad_sample is None  # nothing per sample was materialised
    assert steps_taken(engine) == len(batches)  # the empty batch too


@pytest.mark.parametrize("weighted", [False, True])
def test_face_cnn_matches_brute_force(weighted):
    data = _dataset("face_cnn", 13, weighted=weighted)
    _check_against_brute_force(_model("face_cnn"), data, _poisson_like_batches(data))


def test_face_cnn_on_opacus_poisson_batches_matches_brute_force():
    data = _dataset("face_cnn", 24)
    sampler_model = _model("face_cnn")
    _, _, dp_loader, _ = make_private(sampler_model, torch.optim.SGD(sampler_model.parameters()),
                                      DataLoader(data, batch_size=6), DPPlan(0.0, 0.25, 1, C), accountant="rdp")
    batches = list(dp_loader) + list(dp_loader)
    assert len({len(b[0]) for b in batches}) > 1  # sizes vary
    _check_against_brute_force(_model("face_cnn"), data, batches)


def _book_keeping_loss(model, optimizer, per_sample):
    """What dp_training's ghost loss does for a model with book-keeping installed: its backward clips through
    ``book_keeping_backward``."""
    from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

    class Loss(DPTensorFastGradientClipping):
        def backward(self) -> None:
            book_keeping_backward(self.module, self.optimizer, self.loss_per_sample)

    return Loss(model, optimizer, per_sample, loss_reduction="mean")


def test_node_training_loop_matches_brute_force(monkeypatch):
    """``train_epochs`` (the node's loop: per-sample weighted cross-entropy, the empty batch through a plain
    backward of a zero loss) with book-keeping; until dp_training installs it in
    ``make_private`` and routes its ghost loss to it, the test does both the same way."""
    import client.privacy.dp_training as dp_training

    model = _model("face_cnn")
    reference = copy.deepcopy(model)
    data = _dataset("face_cnn", 13, weighted=True)
    private, optimizer, _, engine = _private(model, data)
    if not uses_book_keeping(private):
        assert install_book_keeping(private)
        monkeypatch.setattr(dp_training, "ghost_clipping_loss", _book_keeping_loss)
    trainable = [p for p in private.parameters() if p.requires_grad]
    batches = _poisson_like_batches(data)
    for batch in batches:
        reference.load_state_dict(private._module.state_dict())
        expected, norms = _brute_force_clipped_sum(reference, batch, 1, C)
        assert all(norm > 10 * C for norm in norms), norms
        before = [p.detach().clone() for p in trainable]
        train_epochs(private, [batch], optimizer, epochs=1, n_inputs=1, device=torch.device("cpu"), private=True)
        got = [(b - p.detach()) * optimizer.expected_batch_size for b, p in zip(before, trainable)]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, atol=C * 5e-3, rtol=1e-3)  # float32 sums: CI once saw 1.26e-6
    assert steps_taken(engine) == len(batches)


class _Layers(nn.Module):
    """Every case the rules treat differently: a one-channel conv (Opacus's unfold rule), a conv with bias,
    stride, dilation and reflect padding, a GroupNorm with a frozen weight and one with a frozen bias, a frozen
    conv, a Linear on a 3-D input without bias, a frozen-weight Linear, and a trained Linear whose output does
    not reach the loss (its gradient is zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.g1 = nn.GroupNorm(2, 4)
        self.g1.weight.requires_grad_(False)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, padding_mode="reflect")
        self.g2 = nn.GroupNorm(3, 6)
        self.g2.bias.requires_grad_(False)
        self.frozen = nn.Conv2d(6, 6, 1)
        self.frozen.requires_grad_(False)
        self.seq = nn.Linear(6, 5, bias=False)
        self.frozen_weight = nn.Linear(5, 5)
        self.frozen_weight.weight.requires_grad_(False)
        self.unused = nn.Linear(5, 3)
        self.head = nn.Linear(5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.g1(self.c1(x)))
        h = torch.tanh(self.frozen(torch.relu(self.g2(self.c2(h)))))
        h = torch.tanh(self.seq(h.flatten(2).transpose(1, 2))).mean(1)  # (B, positions, 6) -> Linear -> (B, 5)
        h = torch.tanh(self.frozen_weight(h))
        self.unused(h)
        return self.head(h)


def test_hand_built_layers_match_brute_force():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(torch.rand(12, 1, 12, 12, generator=g), torch.randint(0, 7, (12,), generator=g),
                         torch.zeros(12, 2), torch.rand(12, generator=g) + 0.5)
    _check_against_brute_force(_Layers(), data, _poisson_like_batches(data, (4, 0, 6, 2)))


class _WithLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.fc(x)))


class _ExtraParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 7)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


class _Shared(nn.Module):
    """A weight shared between two layers (tying): no one layer's capture covers it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(7, 7)
        self.b = nn.Linear(7, 7)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("build,width", [(_WithLayerNorm, 4), (_ExtraParameter, 4), (_Shared, 7)])
def test_unsupported_models_keep_opacus_hooks(build, width):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, width), torch.randint(0, 7, (8,)), torch.zeros(8, 2))
    private, *_ = _private(build(), data)
    assert not install_book_keeping(private)
    assert not uses_book_keeping(private) and private.autograd_grad_sample_hooks


def test_voice_crnn_and_linear_heads_are_refused():
    """voice_crnn has LSTM/attention layers; a linear head already clips without hooks (dp_training's own
    path); a model outside ghost mode has no ghost loss to route through."""
    crnn = _model("voice_crnn")
    private, *_ = _private(crnn, _dataset("voice_crnn", 8))
    assert not install_book_keeping(private) and private.autograd_grad_sample_hooks
    head = _model("face_scatter")
    private, *_ = _private(head, _dataset("face_scatter", 8))
    assert not install_book_keeping(private) and hasattr(private, "_fedemo_linear_head")
    cnn = _model("face_cnn")
    loader = DataLoader(_dataset("face_cnn", 8), batch_size=4)
    hooks, *_ = make_private(cnn, torch.optim.SGD(cnn.parameters()), loader, DPPlan(0.0, 0.5, 1, C),
                             accountant="rdp", grad_sample_mode="hooks")
    assert not install_book_keeping(hooks)


class _Tied(nn.Module):
    """A layer called twice (and a second trained layer, so that dp_training's linear-head path does not take it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(7, 7)
        self.head = nn.Linear(7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(torch.tanh(self.fc(x))))


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(7, 7)
        self.head = nn.Linear(7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu_(self.fc(x)))


@pytest.mark.parametrize("build,match", [(_Tied, "2 times"), (_InPlace, "in place")])
def test_a_layer_called_twice_or_modified_in_place_fails_the_step(build, match):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8, 7), torch.randint(0, 7, (8,)), torch.zeros(8, 2))
    private, optimizer, *_ = _private(build(), data)
    assert install_book_keeping(private)
    with pytest.raises(RuntimeError, match=match):
        _step(private, optimizer, tuple(t[:3] for t in data.tensors))


@pytest.mark.parametrize("empty", [True, False])
def test_noise_has_std_z_c_over_expected_batch_size_from_the_secret_generator(empty):
    """The noise alone on an empty batch, or a noise so large the clipped sum vanishes next to it."""
    z, clip = (1.3, 0.7) if empty else (1000.0, 0.7)
    model = _model("face_cnn")
    data = _dataset("face_cnn", 16)
    torch.manual_seed(0)  # what the run's seed would fix: it must not fix the noise
    private, optimizer, _, engine = _private(model, data, z=z, clip=clip)
    assert install_book_keeping(private)
    batch = tuple(t[:0] if empty else t[:4] for t in data.tensors)
    trainable = [p for p in private.parameters() if p.requires_grad]
    updates = []
    for _ in range(2):
        before = [p.detach().clone() for p in trainable]
        _step(private, optimizer, batch)
        updates.append(torch.cat([(b - p.detach()).flatten() for b, p in zip(before, trainable)]))
    updates = torch.cat(updates)
    expected = z * clip / optimizer.expected_batch_size
    assert optimizer.expected_batch_size == 4 and steps_taken(engine) == 2
    assert optimizer.generator is not None and optimizer.generator is not torch.default_generator
    assert updates.numel() > 4000
    assert abs(float(updates.std()) / expected - 1) < 0.05
    assert abs(float(updates.mean())) < 5 * expected / updates.numel() ** 0.5
