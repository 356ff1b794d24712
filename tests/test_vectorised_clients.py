"""Vectorised clients (simulations/engine/vectorised_clients.py): every client's update equals its sequential one.

The sequential reference is client/local_training.py's train_epochs with make_optimizer's optimiser, on the same
batches (each client's loader shuffled by its own seeded generator); clients have different sizes, so short
batches are padded and clients that run out of batches are masked.

Adam runs in float64: it divides by sqrt(v) + eps, so for a coordinate whose gradient is near zero a last-bit
difference in summation order (vmap's grouped convolution against one client's) moves the step by up to the
learning rate in float32 (2e-4 seen at lr 0.01); in float64 the same computation agrees to 1e-12. SGD agrees in
float32 to 1e-7.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from client.local_training import make_optimizer, train_epochs
from shared_models import messages as msgs
from shared_models.models.registry import build_model
from simulations.engine.vectorised_clients import (CPU_GROUP_CLIENTS, DP_REFUSAL, epoch_batches, group_size_for,
                                                   optimiser_spec, refuse_dp, train_clients)

CPU = torch.device("cpu")
SIZES = [21, 13, 5, 9]  # batch size 8: 3, 2, 1 and 2 batches per epoch, last ones short


class Settings:
    def __init__(self, optimizer: str, weight_decay: float = 0.0) -> None:
        self.optimizer, self.learning_rate, self.momentum, self.weight_decay = optimizer, 0.01, 0.9, weight_decay


def _face(n: int, g: torch.Generator, weighted: bool = False) -> TensorDataset:
    tensors = [torch.rand(n, 1, 48, 48, generator=g), torch.randint(0, 7, (n,), generator=g), torch.zeros(n, 2)]
    if weighted:  # fairness-reweight's per-sample loss weight
        tensors.append(torch.rand(n, generator=g) + 0.5)
    return TensorDataset(*tensors)


def _voice(n: int, g: torch.Generator, va: bool = False, frames: int = 12) -> TensorDataset:
    mask = torch.ones(n, 3)
    mask[::2, 2] = 0  # every other clip one segment shorter
    target = torch.rand(n, 2, generator=g) * 2 - 1 if va else torch.zeros(n, 2)
    return TensorDataset(torch.randn(n, 3, 128, frames, generator=g), mask, torch.randint(0, 7, (n,), generator=g), target)


def _cast(datasets, dtype: torch.dtype):
    return [TensorDataset(*(t.to(dtype) if t.is_floating_point() else t for t in d.tensors)) for d in datasets]


def _loaders(datasets, seed: int):
    return [DataLoader(d, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed + i))
            for i, d in enumerate(datasets)]


def _check(model_name: str, datasets, settings: Settings, n_inputs: int, epochs: int = 2, group_size: int | None = None,
           **model_kwargs) -> None:
    dtype = torch.float64 if settings.optimizer == "adam" else torch.float32  # the module docstring says why
    datasets = _cast(datasets, dtype)
    torch.manual_seed(0)
    global_model = build_model(model_name, **model_kwargs).to(dtype)
    before = {k: v.clone() for k, v in global_model.state_dict().items()}
    batches = [epoch_batches(loader, epochs) for loader in _loaders(datasets, seed=5)]
    vectorised = train_clients(global_model, batches, optimiser_spec(settings), n_inputs=n_inputs, device=CPU,
                               group_size=group_size)
    assert all(torch.equal(before[k], v) for k, v in global_model.state_dict().items()), "global model changed"
    for c, loader in enumerate(_loaders(datasets, seed=5)):
        model = build_model(model_name, **model_kwargs).to(dtype)
        model.load_state_dict(before)
        metrics = train_epochs(model, loader, make_optimizer(model, settings), epochs=epochs, n_inputs=n_inputs,
                               device=CPU)
        state, got = vectorised[c]
        assert got[msgs.TRAIN_SAMPLES] == metrics[msgs.TRAIN_SAMPLES] == epochs * len(datasets[c])
        assert got[msgs.TRAIN_LOSS] == pytest.approx(metrics[msgs.TRAIN_LOSS], abs=1e-5)
        moved = [name for name, p in model.named_parameters() if (p - before[name]).abs().max() > 1e-6]
        assert len(moved) >= 0.8 * len(list(model.parameters())), "the client did not train"  # the check can fail
        for name, expected in model.state_dict().items():
            torch.testing.assert_close(state[name], expected, atol=1e-5, rtol=0, msg=f"client {c}: {name}")


@pytest.mark.parametrize("optimizer,weight_decay", [("adam", 0.0), ("sgd", 0.0),
                                                    pytest.param("adam", 1e-3, marks=pytest.mark.slow),
                                                    pytest.param("sgd", 1e-3, marks=pytest.mark.slow)])
def test_face_cnn_clients_equal_their_sequential_training(optimizer, weight_decay):
    g = torch.Generator().manual_seed(1)
    _check("face_cnn", [_face(n, g) for n in SIZES], Settings(optimizer, weight_decay), n_inputs=1)


@pytest.mark.parametrize("group_size", [1, 3])
def test_clients_trained_in_groups_equal_their_sequential_training(group_size):
    """Groups of 3 split the 4 clients unevenly (3 + 1); groups of 1 run each client alone through vmap."""
    g = torch.Generator().manual_seed(5)
    _check("face_cnn", [_face(n, g) for n in SIZES], Settings("adam"), n_inputs=1, group_size=group_size)


def test_group_size_all_clients_on_a_gpu_a_few_on_a_cpu():
    assert group_size_for("cuda", 50) == 50 and group_size_for(torch.device("cuda:0"), 50) == 50
    assert group_size_for("cpu", 50) == CPU_GROUP_CLIENTS < 50
    assert group_size_for("cpu", 2) == 2 and group_size_for("cuda", 50, group_size=7) == 7
    assert group_size_for("cpu", 3, group_size=10) == 3
    with pytest.raises(ValueError, match="group size 0"):
        group_size_for("cpu", 5, group_size=0)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_voice_stats_clients_equal_their_sequential_training(optimizer):
    g = torch.Generator().manual_seed(2)
    _check("voice_stats", [_voice(n, g) for n in SIZES], Settings(optimizer), n_inputs=2, epochs=3)


@pytest.mark.slow
def test_fairness_weights_and_a_valence_arousal_head_stay_exact():
    g = torch.Generator().manual_seed(3)
    _check("face_cnn", [_face(n, g, weighted=True) for n in SIZES], Settings("adam"), n_inputs=1)
    _check("voice_crnn", [_voice(n, g, va=True, frames=32) for n in SIZES], Settings("adam"), n_inputs=2, epochs=1,
           valence_arousal=True, dropout=0.0)  # dropout draws differ per client under vmap


def test_a_client_with_no_batches_keeps_the_global_weights():
    g = torch.Generator().manual_seed(4)
    model = build_model("face_cnn")
    batches = [epoch_batches(loader, 1) for loader in _loaders([_face(9, g)], seed=0)] + [[]]
    (_, trained), (state, metrics) = train_clients(model, batches, optimiser_spec(Settings("adam")), n_inputs=1,
                                                   device=CPU)
    assert metrics[msgs.TRAIN_SAMPLES] == 0 and trained[msgs.TRAIN_SAMPLES] == 9
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_dp_is_refused_with_the_reason():
    refuse_dp(False)
    with pytest.raises(ValueError, match="DP-SGD") as refused:
        refuse_dp(True)
    assert str(refused.value) == DP_REFUSAL
