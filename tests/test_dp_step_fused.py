"""The node's DP step in fewer operations (client/privacy/dp_optimizer.py, clipping/ghost_linear.py), same mechanism.

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
