"""Book-keeping clipping (client/privacy/clipping/) layer by layer against brute force, its refusals, and which
path ``make_private`` takes.

Hand-built models reach every case the layer rules treat differently (linear heads on fixed features with a frozen
or missing bias or a frozen weight, sequences, convolutions of every layout, GroupNorm with a frozen affine
parameter, a layer whose output does not reach the loss); each DP step must equal tests/clipping_reference.py's
brute-force clipped sum, without Opacus's hooks and without materialising a per-sample gradient of a Linear layer.
A model with a layer book-keeping has no rule for takes Opacus's hooks; a layer called twice or modified in place
fails the step instead of clipping a wrong gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import clipping_reference as ref
from client.local_training import train_epochs
from client.privacy.clipping.book_keeping import book_keeping_layers
from shared_models.models.registry import MODELS, build_model


def _rows(n: int, width: int, *, seed: int = 1, steps: int | None = None, image: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, width, width) if image else (n, width) if steps is None else (n, steps, width)
    return TensorDataset(torch.randn(*shape, generator=g), torch.randint(0, 7, (n,), generator=g),
                         torch.zeros(n, 2), torch.rand(n, generator=g) + 0.5)


class _Head(nn.Module):
    """A fixed front end (a frozen Linear and a nonlinearity) and one trained Linear, as face_scatter and
    voice_stats train."""

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
def test_linear_heads_match_brute_force(kwargs):
    torch.manual_seed(0)
    data = _rows(12, 5, steps=4 if kwargs.get("sequence") else None)
    dp = ref.check_steps(_Head(**kwargs), data, ref.batches(data, (4, 0, 6, 2)), 1)
    assert dp.clipping == "book-keeping" and not getattr(dp.model, "autograd_grad_sample_hooks", None)  # no hook left


class _Layers(nn.Module):
    """A one-channel conv (Opacus's unfold rule), a conv with bias, stride, dilation and reflect padding, a grouped
    conv (Opacus's rule), GroupNorms with a frozen weight and a frozen bias, a frozen conv, a Linear on a 3-D input
    without bias, a frozen-weight Linear, and a trained Linear whose output does not reach the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.g1 = nn.GroupNorm(2, 4)
        self.g1.weight.requires_grad_(False)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, padding_mode="reflect")
        self.g2 = nn.GroupNorm(3, 6)
        self.g2.bias.requires_grad_(False)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.frozen = nn.Conv2d(6, 6, 1)
        self.frozen.requires_grad_(False)
        self.seq = nn.Linear(6, 5, bias=False)
        self.frozen_weight = nn.Linear(5, 5)
        self.frozen_weight.weight.requires_grad_(False)
        self.unused = nn.Linear(5, 3)
        self.head = nn.Linear(5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.g1(self.c1(x)))
        h = torch.tanh(self.frozen(self.grouped(torch.relu(self.g2(self.c2(h))))))
        h = torch.tanh(self.seq(h.flatten(2).transpose(1, 2))).mean(1)  # (B, positions, 6) -> Linear -> (B, 5)
        h = torch.tanh(self.frozen_weight(h))
        self.unused(h)
        return self.head(h)


def test_hand_built_layers_match_brute_force():
    torch.manual_seed(0)
    data = _rows(12, 12, seed=3, image=True)
    dp = ref.check_steps(_Layers(), data, ref.batches(data, (4, 0, 6, 2)), 1)
    for p in dp.model.parameters():
        assert getattr(p, "grad_sample", None) is None  # nothing per sample was materialised by Opacus


class _SmallOutputConvs(nn.Module):
    """Convolutions whose output is small next to their kernel, which book-keeping clips by ghost norms
    (client/privacy/clipping/ghost_conv.py): with bias and padding, with dilation and no bias, with a frozen bias;
    before them a wide-output one that keeps per-sample gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(1, 24, 3, padding=1)
        self.g = nn.GroupNorm(4, 24)
        self.c2 = nn.Conv2d(24, 32, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, dilation=2, padding=2, bias=False)
        self.c4 = nn.Conv2d(32, 40, 2, stride=2)
        self.c4.bias.requires_grad_(False)
        self.head = nn.Linear(40 * 4, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.g(self.wide(x)))
        h = torch.tanh(self.c4(torch.relu(self.c3(torch.relu(self.c2(h))))))
        return self.head(h.flatten(1))


def test_ghost_norm_convolutions_match_brute_force():
    from client.privacy.clipping.ghost_conv import ghost_conv2d, ghost_pays

    torch.manual_seed(0)
    net = _SmallOutputConvs()
    positions = {net.wide: 64, net.c2: 16, net.c3: 16, net.c4: 4}  # output pixels on an 8 x 8 input
    assert [ghost_pays(layer, n) for layer, n in positions.items()] == [False, True, True, True]
    data = _rows(12, 8, seed=4, image=True)
    ref.check_steps(net, data, ref.batches(data, (4, 0, 6, 2)), 1)
    # each rule's squared norms alone, bias included, against one sample's autograd at a time
    for layer, shape in ((net.c2, (5, 24, 8, 8)), (net.c3, (5, 32, 4, 4)), (net.c4, (5, 32, 4, 4))):
        a = torch.randn(shape)
        g = torch.randn_like(layer(a))
        sq, _ = ghost_conv2d(layer, a, g)
        trained = [p for p in layer.parameters() if p.requires_grad]
        for i in range(len(a)):
            grads = torch.autograd.grad((layer(a[i:i + 1]) * g[i:i + 1]).sum(), trained)
            torch.testing.assert_close(sq[i], sum(gr.square().sum() for gr in grads), rtol=1e-4, atol=0)


def test_every_registered_model_takes_book_keeping():
    for name in MODELS:
        assert book_keeping_layers(build_model(name)) is not None, name


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
        self.a = nn.Linear(4, 7)
        self.b = nn.Linear(7, 7)
        self.b.weight = nn.Parameter(torch.randn(7, 7))
        self.a.weight = nn.Parameter(self.b.weight[:, :4].detach().clone())
        self.a.bias = self.b.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("build", [_WithLayerNorm, _ExtraParameter, _Shared])
def test_models_book_keeping_cannot_clip_take_opacus_hooks_and_still_match_brute_force(build):
    torch.manual_seed(0)
    net = build()
    assert book_keeping_layers(net) is None
    data = _rows(12, 4)
    dp = ref.check_steps(net, data, ref.batches(data, (4, 0, 6, 2)), 1)
    assert dp.clipping == "hooks" and dp.model.autograd_grad_sample_hooks
    with pytest.raises(ValueError, match="no rule"):
        ref.private(build(), data, clipping="book-keeping")


class _Tied(nn.Module):
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
    data = _rows(8, 7)
    dp = ref.private(build(), data)
    assert dp.clipping == "book-keeping"
    with pytest.raises(RuntimeError, match=match):
        train_epochs(dp.model, [tuple(t[:3] for t in data.tensors)], dp.optimizer, epochs=1, n_inputs=1,
                     device=ref.CPU, private=dp)


def test_make_private_writes_nothing_onto_opacus_objects():
    """The private step holds the capture; Opacus's wrapper keeps only what Opacus itself sets."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    data = _rows(8, 5)
    dp = ref.private(_Head(), data)
    plain = GradSampleModuleFastGradientClipping(_Head(), max_grad_norm=1.0, use_ghost_clipping=True)
    plain.remove_hooks()  # Opacus's own public method, as make_private calls it
    assert set(vars(dp.model)) == set(vars(plain))
    assert not [a for obj in (dp.model, dp.optimizer, dp.module) for a in vars(obj) if a.startswith("_fedemo")]
