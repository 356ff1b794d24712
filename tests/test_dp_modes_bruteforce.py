"""The node's DP-SGD step for every registered model, and both clipping paths, against brute force.

``make_private`` + ``train_epochs`` (noiseless, SGD at lr 1) must leave the sum of each sample's gradient clipped to
C over all parameters jointly (tests/clipping_reference.py: plain autograd, one sample at a time), on batches of
varying size as Poisson batches are (one empty), with a C small enough that every sample is clipped. The noise must
have std z x C / expected batch size on either path, come from secret generators (not from torch's global seed,
which the run's seed fixes), and every step must be accounted.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import clipping_reference as ref
from client.local_training import train_epochs
from client.privacy.dp_training import DPPlan, make_private
from shared_models.models.registry import MODELS

FAST = ("face_scatter", "voice_stats", "face_cnn")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else pytest.mark.slow) for n in MODELS])
def test_every_model_clips_each_sample_jointly_like_brute_force_in_its_node_path(name):
    va = MODELS[name].supports_valence_arousal  # the valence/arousal head too, where the model has one
    data = ref.dataset(name, 13, weighted=True)
    dp = ref.check_steps(ref.model(name, va), data, ref.batches(data), ref.n_inputs(name))
    assert dp.clipping == "book-keeping"  # every registered model: one backward pass, no Opacus hooks


@pytest.mark.parametrize("name", ["face_cnn", "voice_stats", pytest.param("voice_crnn", marks=pytest.mark.slow)])
def test_opacus_hooks_clip_like_brute_force(name):
    """The fallback path, on models book-keeping also covers (so that both paths meet the same reference)."""
    data = ref.dataset(name, 13, weighted=True)
    va = MODELS[name].supports_valence_arousal
    dp = ref.check_steps(ref.model(name, va), data, ref.batches(data), ref.n_inputs(name), clipping="hooks")
    assert dp.clipping == "hooks"


def test_node_path_on_the_secret_poisson_loaders_batches_matches_brute_force():
    """The real Poisson loader's batches, whose sizes vary, through the node's path."""
    data = ref.dataset("face_cnn", 24)
    sampler = ref.model("face_cnn")
    dp_loader = make_private(sampler, torch.optim.SGD(sampler.parameters()), DataLoader(data, batch_size=6),
                             DPPlan(0.0, 0.25, 1, ref.C), accountant="rdp").loader
    steps = list(dp_loader) + list(dp_loader)
    assert len({len(b[0]) for b in steps}) > 1  # sizes vary
    ref.check_steps(ref.model("face_cnn"), data, steps, 1)


# --------------------------------------------------------------------------- noise
def _noise_updates(name: str, clipping: str, *, z: float, clip: float, empty: bool, steps: int = 2, seed: int = 0):
    """The parameter updates (SGD at lr 1) of ``steps`` DP steps; with ``empty`` on empty batches (the noise
    alone), else on full ones with a noise so large that the clipped sum is negligible next to it."""
    data = ref.dataset(name, 16)
    net = ref.model(name)
    torch.manual_seed(seed)  # what the run's seed would fix: it must not fix the noise
    dp = ref.private(net, data, z=z, clip=clip, clipping=clipping)
    batch = tuple(t[:0] if empty else t[:4] for t in data.tensors)
    trainable = [p for p in dp.model.parameters() if p.requires_grad]
    updates = []
    for _ in range(steps):
        before = [p.detach().clone() for p in trainable]
        train_epochs(dp.model, [batch], dp.optimizer, epochs=1, n_inputs=ref.n_inputs(name), device=ref.CPU,
                     private=dp)
        updates.append(torch.cat([(b - p.detach()).flatten() for b, p in zip(before, trainable)]))
    assert dp.steps_taken() == steps and dp.optimizer.expected_batch_size == 4
    return torch.cat(updates)


@pytest.mark.parametrize("name,clipping", [("face_cnn", "book-keeping"), ("voice_stats", "book-keeping"),
                                           ("face_scatter", "book-keeping"), ("face_cnn", "hooks"),
                                           ("voice_stats", "hooks")])
@pytest.mark.parametrize("empty", [True, False])
def test_noise_std_is_z_times_c_over_expected_batch_size_on_either_path(name, clipping, empty):
    z, clip = (1.3, 0.7) if empty else (1000.0, 0.7)
    updates = _noise_updates(name, clipping, z=z, clip=clip, empty=empty, steps=2 if name != "voice_stats" else 12)
    expected = z * clip / 4
    assert updates.numel() > 4000
    assert abs(float(updates.std()) / expected - 1) < 0.05
    assert abs(float(updates.mean())) < 5 * expected / updates.numel() ** 0.5


@pytest.mark.parametrize("name,clipping", [("face_cnn", "book-keeping"), ("voice_stats", "hooks")])
def test_noise_and_poisson_masks_come_from_secret_generators(name, clipping):
    """Under the same torch global seed (which the coordinator's seed would fix) the noise differs between two
    runs, and so do the Poisson batches."""
    a = _noise_updates(name, clipping, z=1.0, clip=1.0, empty=True, steps=1, seed=0)
    b = _noise_updates(name, clipping, z=1.0, clip=1.0, empty=True, steps=1, seed=0)
    assert not torch.equal(a, b)

    def batches():
        data = ref.dataset(name, 40)
        net = ref.model(name)
        dp = make_private(net, torch.optim.SGD(net.parameters()), DataLoader(data, batch_size=4),
                          DPPlan(1.0, 0.1, 1, 1.0), accountant="rdp", clipping=clipping)
        assert dp.optimizer.generator is not None and dp.optimizer.generator is not torch.default_generator
        assert dp.loader.batch_sampler.generator is not None
        torch.manual_seed(0)
        return [len(b[0]) for b in dp.loader], [b[-2].tolist() for b in dp.loader]

    assert batches() != batches()
