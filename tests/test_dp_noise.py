"""The DP-SGD noise of the node's optimizer (client/privacy/dp_optimizer.py): one flat draw per step from a secret
generator.

Each element of the noised gradient is the clipped sum plus N(0, (z C)^2) (mean, std, and the shape of the
distribution, on 81,655 elements per step); successive steps draw afresh; two nodes built under the same torch and
numpy global seeds (which a run's seed fixes) draw different noise from differently seeded generators; a DP step
leaves the global generators untouched; ``add_noise`` keeps its contract (the clipped sum in ``summed_grad`` stays
as it was, the noised gradient is a new tensor), which the privacy audit relies on when it wraps the method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import clipping_reference as ref
from client.local_training import train_epochs
from client.privacy.dp_optimizer import BookKeepingDPOptimizer, HooksDPOptimizer

Z, CLIP = 1.3, 0.7


def _node(name: str = "face_scatter", clipping: str | None = None, seed: int = 0):
    data = ref.dataset(name, 16)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return ref.private(ref.model(name), data, z=Z, clip=CLIP, clipping=clipping), data


def _empty_step_noise(dp, data, name: str = "face_scatter") -> torch.Tensor:
    """One DP step on an empty Poisson batch (the update is the noise alone), in units of z C."""
    trainable = [p for p in dp.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    batch = tuple(t[:0] for t in data.tensors)
    train_epochs(dp.model, [batch], dp.optimizer, epochs=1, n_inputs=ref.n_inputs(name), device=ref.CPU, private=dp)
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, trainable)])
    return update * dp.optimizer.expected_batch_size / (Z * CLIP)


@pytest.mark.parametrize("clipping", ["book-keeping", "hooks"])
def test_each_element_gets_an_independent_standard_gaussian_times_z_c(clipping):
    dp, data = _node(clipping=clipping)
    assert isinstance(dp.optimizer, BookKeepingDPOptimizer if clipping == "book-keeping" else HooksDPOptimizer)
    first, second = _empty_step_noise(dp, data), _empty_step_noise(dp, data)
    assert first.numel() == 81655
    for noise in (first, second):
        z = noise.double().numpy()
        assert abs(z.mean()) < 5 / len(z) ** 0.5
        assert abs(z.std() - 1) < 0.02
        assert stats.kstest(z, "norm").pvalue > 1e-4  # a Gaussian, not merely the right two moments
        assert abs(stats.kurtosis(z)) < 0.1
    assert abs(float(np.corrcoef(first.numpy(), second.numpy())[0, 1])) < 0.02  # a fresh draw every step
    assert dp.steps_taken() == 2


def test_nodes_draw_from_their_own_secret_generators_never_the_global_ones():
    """Two nodes under the same global seeds draw different noise; a DP step draws nothing from torch's or numpy's
    global generator (their states are as before)."""
    a, data = _node(seed=0)
    b, _ = _node(seed=0)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    noise_a = _empty_step_noise(a, data)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), numpy_state))
    noise_b = _empty_step_noise(b, data)
    assert abs(float(np.corrcoef(noise_a.numpy(), noise_b.numpy())[0, 1])) < 0.02
    assert a.optimizer.generator is not b.optimizer.generator
    assert a.optimizer.generator.initial_seed() != b.optimizer.generator.initial_seed()
    assert torch.default_generator not in (a.optimizer.generator, b.optimizer.generator)


def test_add_noise_turns_the_clipped_sum_into_a_new_noised_grad_and_leaves_the_sum():
    dp, _ = _node()
    params = [p for p in dp.model.parameters() if p.requires_grad]
    sums = [torch.full(p.shape, 0.25) for p in params]
    for p, s in zip(params, sums):
        p.summed_grad, p.grad = s, None
    dp.optimizer.add_noise()
    noise = torch.cat([(p.grad - 0.25).flatten() for p in params]) / (Z * CLIP)
    for p, s in zip(params, sums):
        assert p.summed_grad is s and torch.equal(s, torch.full(p.shape, 0.25))  # the sum itself is unchanged
        assert p.grad.shape == p.shape and p.grad.data_ptr() != s.data_ptr()
    assert abs(float(noise.std()) - 1) < 0.02 and abs(float(noise.mean())) < 0.02
    with pytest.raises(ValueError, match="zero_grad"):  # Opacus's guard: a clipped sum is noised once
        dp.optimizer.add_noise()


def test_an_opacus_optimizer_without_a_generator_gets_a_secret_one_not_the_global_one():
    from opacus.optimizers import DPOptimizer

    from client.privacy.dp_optimizer import with_secret_noise

    net = torch.nn.Linear(50, 40)
    fast = with_secret_noise(DPOptimizer(torch.optim.SGD(net.parameters(), lr=1.0), noise_multiplier=Z,
                                         max_grad_norm=CLIP, expected_batch_size=1, loss_reduction="sum"))
    assert isinstance(fast, HooksDPOptimizer) and fast.generator not in (None, torch.default_generator)
    for p in net.parameters():
        p.summed_grad, p.grad = torch.zeros_like(p), None
    state = torch.get_rng_state()
    fast.add_noise()
    assert torch.equal(torch.get_rng_state(), state)
    noise = torch.cat([p.grad.flatten() for p in net.parameters()]) / (Z * CLIP)
    assert abs(float(noise.std()) - 1) < 0.05
