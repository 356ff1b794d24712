"""Poisson sampling a block of steps at a time (client/privacy/poisson_sampler.py): from the same generator state
it gives exactly Opacus's batches, across block boundaries and for any node size; a node's private loader uses it
on its secret generator, with Opacus's empty-batch collation."""

from __future__ import annotations

import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

import clipping_reference as ref
from client.privacy import poisson_sampler
from client.privacy.poisson_sampler import BlockPoissonSampler


def _batches(cls, num_samples: int, sample_rate: float, steps: int | None, seed: int) -> list[list[int]]:
    sampler = cls(num_samples=num_samples, sample_rate=sample_rate, steps=steps,
                  generator=torch.Generator().manual_seed(seed))
    assert len(sampler) == (steps if steps is not None else int(1 / sample_rate))
    return [list(batch) for epoch in range(2) for batch in sampler]  # two epochs: the generator carries on


@pytest.mark.parametrize("num_samples, sample_rate, steps", [(1, 0.5, None), (7, 0.3, 5), (1280, 1 / 20, None),
                                                            (50, 0.9, 3), (40, 1e-3, 9)])
def test_the_same_batches_as_opacus_from_the_same_generator_state(num_samples, sample_rate, steps):
    for seed in range(3):
        ours = _batches(BlockPoissonSampler, num_samples, sample_rate, steps, seed)
        assert ours == _batches(UniformWithReplacementSampler, num_samples, sample_rate, steps, seed)


def test_blocks_are_bounded_and_join_seamlessly(monkeypatch):
    """With room for 3 steps' uniforms per draw, 10 steps take 4 draws (3, 3, 3, 1), and the batches are still
    Opacus's; a node bigger than a draw's room draws one step at a time."""
    monkeypatch.setattr(poisson_sampler, "_MAX_UNIFORMS", 3 * 100)
    drawn = []
    real_rand = torch.rand

    def counting_rand(*size, **kwargs):
        drawn.append(size)
        return real_rand(*size, **kwargs)

    monkeypatch.setattr(poisson_sampler.torch, "rand", counting_rand)
    ours = _batches(BlockPoissonSampler, 100, 0.2, 10, seed=4)
    monkeypatch.setattr(poisson_sampler.torch, "rand", real_rand)
    assert ours == _batches(UniformWithReplacementSampler, 100, 0.2, 10, seed=4)
    assert [size[0] for size in drawn] == [3, 3, 3, 1] * 2
    monkeypatch.setattr(poisson_sampler, "_MAX_UNIFORMS", 50)
    assert _batches(BlockPoissonSampler, 100, 0.2, 4, seed=5) == _batches(UniformWithReplacementSampler, 100, 0.2,
                                                                         4, seed=5)


def test_a_private_loader_samples_in_blocks_from_its_secret_generator_with_empty_batches():
    data = ref.dataset("face_scatter", 16)
    torch.manual_seed(0)
    step = ref.private(ref.model("face_scatter"), data, z=1.0, clip=1.0, batch_size=1)  # q = 1/16
    sampler = step.loader.batch_sampler
    assert isinstance(sampler, BlockPoissonSampler) and sampler.generator is not torch.default_generator
    assert sampler.sample_rate == pytest.approx(1 / 16) and len(step.loader) == 16
    state = sampler.generator.get_state()
    got = [batch for _ in range(5) for batch in step.loader]
    sampler.generator.set_state(state)
    opacus = UniformWithReplacementSampler(num_samples=16, sample_rate=sampler.sample_rate, generator=sampler.generator)
    # each epoch's iterator also draws its base seed from the loader's generator, as Opacus's loader's does
    as_opacus = DataLoader(list(range(16)), batch_sampler=opacus, collate_fn=list, generator=step.loader.generator)
    assert step.loader.generator is sampler.generator
    want = [indices for _ in range(5) for indices in as_opacus]
    assert [len(b[0]) for b in got] == [len(i) for i in want]
    assert any(len(i) == 0 for i in want)  # empty Poisson batches (each 35% likely), collated with the fields' shapes
    empty = next(b for b in got if len(b[0]) == 0)
    assert [tuple(t.shape[1:]) for t in empty] == [tuple(t.shape[1:]) for t in got[0]]
    for batch, indices in zip(got, want):
        if indices:
            assert torch.equal(batch[0], torch.stack([data[i][0] for i in indices]))
