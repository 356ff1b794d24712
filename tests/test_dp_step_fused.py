"""The node's DP step in fewer operations (client/privacy/dp_optimizer.py, clipping/ghost_linear.py), same mechanism.

A node's book-keeping step draws its noise first and the clipping adds its scaled sums into it (``noise_first``,
clipping/grad_sums.py): the release equals Opacus's order from the same draw, an empty batch releases the noise
alone, a gradient replaced in between fails the step, and every rule adds into a gradient already there.

``noise_and_scale`` (the book-keeping optimizer's noise and scaling in one pass) gives what ``add_noise`` then
``scale_grad`` give from the same generator state; with ``add_noise`` replaced on the instance (the privacy audit's
wrapper) the step calls it; ``zero_grad`` leaves what Opacus's and the wrapped optimizer's would; the Linear rule's
norms and clipped sums equal explicit per-sample gradients, also for a non-contiguous output gradient.
"""

from __future__ import annotations

import pytest
import torch

import clipping_reference as ref
from client.local_training import train_epochs
from client.privacy.clipping.ghost_linear import ghost_linear
from client.privacy.dp_optimizer import BookKeepingDPOptimizer

Z, CLIP = 1.3, 0.7


def _node(clipping: str = "book-keeping"):
    data = ref.dataset("face_scatter", 16)
    torch.manual_seed(0)
    return ref.private(ref.model("face_scatter"), data, z=Z, clip=CLIP, clipping=clipping), data


def _set_sums(params, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sums = [torch.randn(p.shape, generator=g) for p in params]
    for p, s in zip(params, sums):
        p.summed_grad, p.grad = s, None
    return sums


def test_noise_and_scale_equals_add_noise_then_scale_grad_from_the_same_draw():
    dp, _ = _node()
    opt = dp.optimizer
    assert isinstance(opt, BookKeepingDPOptimizer) and opt.loss_reduction == "mean"
    params = opt.params
    state = opt.noise.generator.get_state()
    sums = _set_sums(params, 1)
    opt.noise_and_scale()
    fused = [p.grad.clone() for p in params]
    assert all(p.summed_grad is s for p, s in zip(params, sums))  # the clipped sums themselves are untouched
    opt.noise.generator.set_state(state)
    _set_sums(params, 1)
    opt.add_noise()
    opt.scale_grad()
    for f, p in zip(fused, params):
        assert torch.allclose(f, p.grad, rtol=1e-5, atol=1e-7)
    noise = torch.cat([(f - s / opt.expected_batch_size).flatten() for f, s in zip(fused, sums)])
    assert abs(float(noise.std()) * opt.expected_batch_size / (Z * CLIP) - 1) < 0.02  # std z C / B, not less
    with pytest.raises(ValueError, match="zero_grad"):  # Opacus's guard holds on the fused path too
        opt.noise_and_scale()


def test_a_replaced_add_noise_is_what_the_step_calls():
    """The privacy audit wraps ``add_noise`` on the optimizer instance: the step must then take it, not the fused
    pass."""
    dp, data = _node()
    calls = []
    real = dp.optimizer.add_noise

    def add_noise() -> None:
        calls.append(1)
        real()

    dp.optimizer.add_noise = add_noise
    batch = tuple(t[:5] for t in data.tensors)
    train_epochs(dp.model, [batch, batch], dp.optimizer, epochs=1, n_inputs=1, device=ref.CPU, private=dp)
    assert len(calls) == 2 and dp.steps_taken() == 2


@pytest.mark.parametrize("clipping", ["book-keeping", "hooks"])
def test_zero_grad_clears_what_opacus_and_the_wrapped_optimizer_clear(clipping):
    dp, data = _node(clipping)
    batch = tuple(t[:5] for t in data.tensors)
    train_epochs(dp.model, [batch], dp.optimizer, epochs=1, n_inputs=1, device=ref.CPU, private=dp)
    params = [p for group in dp.optimizer.original_optimizer.param_groups for p in group["params"]]
    assert all(p.grad is not None for p in params)
    dp.optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None and p.summed_grad is None for p in params)
    if clipping == "hooks":
        assert all(p.grad_sample is None for p in params)
    for p in params:
        p.grad = torch.ones_like(p)
    dp.optimizer.zero_grad(set_to_none=False)  # Opacus's own path: gradients zeroed in place
    assert all(p.grad is not None and not p.grad.any() for p in params)


@pytest.mark.parametrize("bias,frozen", [(True, None), (False, None), (True, "weight"), (True, "bias")])
def test_ghost_linear_equals_explicit_per_sample_gradients(bias, frozen):
    torch.manual_seed(0)
    layer = torch.nn.Linear(9, 4, bias=bias)
    if frozen:
        getattr(layer, frozen).requires_grad_(False)
    a = torch.randn(6, 9)
    g = torch.randn(4, 6).t()  # a non-contiguous output gradient, as a transposed-layout forward gives
    coef = torch.rand(6)
    sq, clipped = ghost_linear(layer, a, g)
    per_w = torch.einsum("bo,bi->boi", g, a)  # sample i's weight gradient g_i a_i^T
    want_sq = torch.zeros(6)
    if layer.weight.requires_grad:
        want_sq += per_w.flatten(1).square().sum(1)
    if bias and layer.bias.requires_grad:
        want_sq += g.square().sum(1)
    assert torch.allclose(sq, want_sq, rtol=1e-5)
    clipped(coef)
    if layer.weight.requires_grad:
        assert torch.allclose(layer.weight.grad, torch.einsum("b,boi->oi", coef, per_w), rtol=1e-5, atol=1e-6)
    else:
        assert layer.weight.grad is None
    if bias and layer.bias.requires_grad:
        assert torch.allclose(layer.bias.grad, coef @ g, rtol=1e-5, atol=1e-6)


# --- the step's noise first, the clipped sums added into it (BookKeepingDPOptimizer.noise_first) ---------------

def _update(dp, batch) -> list[torch.Tensor]:
    """One node step through ``train_epochs`` (SGD at lr 1): the released gradient, from the update."""
    params = dp.optimizer.params
    before = [p.detach().clone() for p in params]
    train_epochs(dp.model, [batch], dp.optimizer, epochs=1, n_inputs=1, device=ref.CPU, private=dp)
    return [b - p.detach() for b, p in zip(before, params)]


def _twins():
    """Two nodes with the same weights and the same noise stream (no draw made ahead: one planned step)."""
    (dp, data), (twin, _) = _node(), _node()
    twin.module.load_state_dict(dp.module.state_dict())
    twin.optimizer.noise.generator.set_state(dp.optimizer.noise.generator.get_state())
    return dp, twin, data


def test_sums_added_into_the_noise_release_what_opacus_order_releases_from_the_same_draw():
    dp, twin, data = _twins()
    batch = tuple(t[:6] for t in data.tensors)
    twin.optimizer.add_noise = twin.optimizer.add_noise  # replaced on the instance: Opacus's order (noise after)
    fused, ordered = _update(dp, batch), _update(twin, batch)
    for f, o in zip(fused, ordered):
        torch.testing.assert_close(f, o, rtol=1e-5, atol=1e-6)
    # the noise is there, at std z C / B: the update less the clipped mean sum
    scale = dp.optimizer.expected_batch_size
    sums, _ = ref.clipped_sum(ref.model("face_scatter"), batch, 1, CLIP)
    assert abs(float(torch.cat([(f - s / scale).flatten() for f, s in zip(fused, sums)]).std()) * scale
               / (Z * CLIP) - 1) < 0.02


def test_the_step_releases_noise_alone_for_an_empty_batch():
    dp, data = _node()
    empty = tuple(t[:0] for t in data.tensors)
    update = torch.cat([u.flatten() for u in _update(dp, empty)])
    scale = dp.optimizer.expected_batch_size
    assert abs(float(update.std()) * scale / (Z * CLIP) - 1) < 0.02 and dp.steps_taken() == 1


def test_a_gradient_replaced_after_noise_first_fails_the_step():
    dp, _ = _node()
    opt = dp.optimizer
    opt.zero_grad(set_to_none=True)
    assert opt.noise_first() == 1.0 / opt.expected_batch_size
    params = opt.params
    params[0].grad = torch.zeros_like(params[0])  # a gradient without this step's noise
    with pytest.raises(RuntimeError, match="skip the noise"):
        opt.step()
    assert dp.steps_taken() == 0


def test_zero_grad_forgets_noise_first_so_sums_set_later_are_noised():
    """The vectorised clients' path sets the clipped sums as ``.grad`` after ``zero_grad`` and steps: Opacus's
    order must then noise them, whatever an earlier ``noise_first`` left."""
    dp, _ = _node()
    opt = dp.optimizer
    opt.zero_grad(set_to_none=True)
    opt.noise_first()
    opt.zero_grad(set_to_none=True)
    params = opt.params
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)])
    assert abs(float(update.std()) * opt.expected_batch_size / (Z * CLIP) - 1) < 0.02


def test_noise_first_declines_where_opacus_order_must_run_and_refuses_a_gradient_already_there():
    dp, _ = _node()
    opt = dp.optimizer
    opt.zero_grad(set_to_none=True)
    opt.add_noise = opt.add_noise  # the privacy audit's wrapper
    assert opt.noise_first() is None and all(p.grad is None for p in opt.params)
    del opt.add_noise
    params = opt.params
    params[0].grad = torch.ones_like(params[0])
    with pytest.raises(ValueError, match="zero_grad"):
        opt.noise_first()


def _layers():
    """One layer per rule path: ghost linear (rows and sequences), ghost and per-sample convolution, GroupNorm."""
    torch.manual_seed(0)
    return {
        "linear": (torch.nn.Linear(9, 4), torch.randn(6, 9)),
        "linear_sequence": (torch.nn.Linear(9, 4), torch.randn(6, 5, 9)),
        "conv_ghost": (torch.nn.Conv2d(8, 16, 3), torch.randn(6, 8, 4, 4)),  # ghost_pays: 4 positions
        "conv_per_sample": (torch.nn.Conv2d(2, 3, 3), torch.randn(6, 2, 24, 24)),
        "group_norm": (torch.nn.GroupNorm(2, 4), torch.randn(6, 4, 5, 5)),
    }


@pytest.mark.parametrize("kind", list(_layers()))
def test_every_rule_adds_its_clipped_sums_to_a_gradient_already_there(kind):
    from client.privacy.clipping.layer_rules import RULES

    layer, a = _layers()[kind]
    out = layer(a)
    g = torch.randn_like(out)
    coef = torch.rand(a.shape[0])
    params = [p for p in layer.parameters() if p.requires_grad]
    _, clipped = RULES[type(layer)](layer, a, g)
    clipped(coef)
    alone = [p.grad.clone() for p in params]
    there = [torch.randn_like(p) for p in params]
    for p, t in zip(params, there):
        p.grad = t.clone()
    _, clipped = RULES[type(layer)](layer, a, g)
    clipped(coef)
    for p, t, s in zip(params, there, alone):
        torch.testing.assert_close(p.grad, t + s, rtol=1e-5, atol=1e-5)


def test_the_convolution_cases_take_both_rule_paths():
    from client.privacy.clipping.ghost_conv import ghost_pays

    layers = _layers()
    assert ghost_pays(layers["conv_ghost"][0], 4) and not ghost_pays(layers["conv_per_sample"][0], 22 * 22)
