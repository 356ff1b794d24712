"""The engine benchmark's bounds (simulations/benchmarks/loop_bounds.py): the floor trains on the loop's samples.

The compute floor is only a floor if it does the same forward and backward work as the loop: every client's
samples of the round, each once per epoch. These tests check that on the real data path (a synthetic FER-2013
federation of three nodes), and that the phased loop's training is the per-client one.
"""

from __future__ import annotations

import torch

from client.local_training import make_optimizer, train_epochs
from shared_models.models.registry import build_model
from simulations.benchmarks.loop_bounds import (PHASES, compute_floor, concatenated_batches, loop_training,
                                                phased_rounds)
from simulations.benchmarks.peers import load_settings


def _settings(tmp_path, rounds: int = 1):
    return load_settings({"data-dir": str(tmp_path / "data"), "runs-dir": str(tmp_path / "runs"), "synth-samples": 60,
                          "num-supernodes": 3, "min-available-nodes": 3, "num-server-rounds": rounds,
                          "local-epochs": 2, "partitioner": "iid", "min-partition-size": 5, "model": "face_cnn",
                          "task": "face", "dataset": "fer2013", "batch-size": 8})


def test_concatenated_batches_hold_every_row_once_in_client_order():
    clients = [[(torch.arange(0, 8), torch.arange(100, 108)), (torch.arange(8, 11), torch.arange(108, 111))],
               [(torch.arange(11, 16), torch.arange(111, 116))], []]
    joined = concatenated_batches(clients, rows=6)
    assert [len(b[0]) for b in joined] == [6, 6, 4]
    assert torch.equal(torch.cat([b[0] for b in joined]), torch.arange(16))
    assert all(torch.equal(x + 100, y) for x, y in joined)  # fields stay aligned row by row


def test_the_floor_trains_on_exactly_the_loops_samples_of_the_round(tmp_path):
    settings = _settings(tmp_path)
    rounds, last = phased_rounds(settings, loop_training, threads=1)
    assert len(rounds) == 1 and set(rounds[0]) == set(PHASES) and all(t > 0 for t in rounds[0].values())
    batches = last["batches"]
    assert len(batches) == 3 and all(batches), "every node has batches"
    per_epoch = [sum(len(b[1]) for b in client) // settings.local_epochs for client in batches]
    joined = concatenated_batches(batches, rows=2 * settings.batch_size)
    assert sum(len(b[1]) for b in joined) == settings.local_epochs * sum(per_epoch)
    assert max(len(b[1]) for b in joined) == 2 * settings.batch_size
    labels = torch.cat([b[1] for client in batches for b in client])
    assert torch.equal(torch.cat([b[1] for b in joined]), labels)
    assert set(compute_floor(settings, last, [1, 3], threads=1, repeats=1)) == {1, 3}


def test_the_loops_training_is_each_clients_own_from_the_global_weights(tmp_path):
    settings = _settings(tmp_path)
    _, last = phased_rounds(settings, loop_training, threads=1)
    global_model = build_model(settings.model)
    global_model.load_state_dict(last["global_state"])
    states = loop_training(global_model, last["batches"], settings, torch.device("cpu"))
    for client, state in enumerate(states):
        model = build_model(settings.model)
        model.load_state_dict(last["global_state"])
        train_epochs(model, last["batches"][client], make_optimizer(model, settings), epochs=1, n_inputs=1,
                     device=torch.device("cpu"))
        for name, expected in model.state_dict().items():
            assert torch.equal(state[name], expected), f"client {client}: {name}"
    head = "head.1.weight"
    assert not torch.equal(states[0][head], states[1][head]), "clients trained apart"
    assert not torch.equal(states[0][head], last["global_state"][head]), "clients trained"
