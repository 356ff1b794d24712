"""The engine benchmark's bounds: the plain loop and the compute floor, each round split into its phases.

A round of client work is timed in three phases: ``fetch`` (each node's samples and the batches its shuffled
loader yields, augmentation and audio features included: the product's data path, the same for every
setup), ``train`` (local training and FedAvg) and ``evaluate`` (every node's test set on the new global
model). ``phased_rounds`` runs them with a training function: ``loop_training`` (one client after another,
client/local_training.py) or the vectorised one (simulations/benchmarks/peers.py). ``compute_floor`` trains
ONE model on the same samples (every client's batches of one round, concatenated in order) in batches of
``g`` clients' batch size: the same forward and backward work with no per-client weights, optimiser or
dispatch, the most favourable batching any engine could reach; ``g`` = all clients is what vectorising every
client at once computes, minus the per-client weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from client.data.node_data import client_samples
from client.data.torch_data import NUM_MODEL_INPUTS
from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from shared_models.models.registry import build_model
from simulations.engine.vectorised_clients import epoch_batches

PHASES = ("fetch", "train", "evaluate")
# What keeps the floor from being the same computation as a federation's round (written to the JSON).
FLOOR_DIFFERENCES = [
    "one model and one optimiser train on every client's samples: its result is not 50 clients' updates, only "
    "the arithmetic of their forward and backward passes",
    "batches of g clients' batch size are cut from the clients' batches concatenated in order, so the last "
    "batch of a client no longer stands alone and there are fewer, larger steps (the same samples, each once "
    "per epoch)",
    "no per-client set-up: no loading of the global weights, no new optimiser, no FedAvg",
]

TrainFn = Callable[[torch.nn.Module, list[list[tuple]], object, torch.device], list[dict[str, torch.Tensor]]]


def nodes_of(settings) -> list[dict]:
    return [{"partition-id": pid, "num-partitions": settings.num_supernodes} for pid in range(settings.num_supernodes)]


def loop_training(global_model, batches, settings, device) -> list[dict[str, torch.Tensor]]:
    """Each client's local training in turn, from the global weights, on one model object (as a worker)."""
    model = build_model(settings.model).to(device)
    states = []
    for client_batches in batches:
        model.load_state_dict(global_model.state_dict())
        train_epochs(model, client_batches, make_optimizer(model, settings), epochs=1,  # batches span the epochs
                     n_inputs=NUM_MODEL_INPUTS[settings.task], device=device)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states


def phased_rounds(settings, train: TrainFn, threads: int) -> tuple[list[dict[str, float]], dict]:
    """The federation's rounds in one process, each split into ``PHASES``; also the last round's inputs.

    Returns the seconds of every phase per round and ``{"batches", "global_state"}``: the last round's batches
    and the global weights they trained from (what ``compute_floor`` reuses).
    """
    torch.set_num_threads(threads)
    device = resolve_device(settings.device)
    global_model = build_model(settings.model).to(device)
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    rounds, last = [], {}
    for _ in range(settings.num_server_rounds):
        marks = [time.perf_counter()]
        samples = [client_samples(settings, node, settings.data_dir) for node in nodes_of(settings)]
        batches = [epoch_batches(DataLoader(s.train, batch_size=settings.batch_size, shuffle=True),
                                 settings.local_epochs) for s in samples]
        marks.append(time.perf_counter())
        last = {"batches": batches, "global_state": {k: v.clone() for k, v in global_model.state_dict().items()}}
        states = train(global_model, batches, settings, device)
        sizes = [len(s.train) for s in samples]
        total = sum(sizes)
        global_model.load_state_dict({k: sum(n * state[k].float() for n, state in zip(sizes, states)) / total
                                      for k in states[0]})
        marks.append(time.perf_counter())
        for s in samples:
            evaluate(global_model, DataLoader(s.test, batch_size=64), n_inputs=n_inputs, device=device)
        marks.append(time.perf_counter())
        rounds.append({phase: b - a for phase, a, b in zip(PHASES, marks, marks[1:])})
    return rounds, last


def concatenated_batches(batches: Sequence[Sequence[tuple]], rows: int) -> list[tuple]:
    """Every client's batches joined in order, field by field, and cut into batches of ``rows`` rows."""
    flat = [batch for client in batches for batch in client]
    fields = [torch.cat(column) for column in zip(*flat)]
    total = len(fields[0])
    return [tuple(f[start:start + rows] for f in fields) for start in range(0, total, rows)]


def compute_floor(settings, last: dict, group_sizes: Sequence[int], threads: int, repeats: int = 2
                  ) -> dict[int, float]:
    """Seconds to train ONE model on the last round's samples in batches of g clients' batch size, per g.

    Each g is timed ``repeats`` times from the same global weights; the fastest counts (the first run also
    warms the allocator).
    """
    torch.set_num_threads(threads)
    device = resolve_device(settings.device)
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    model = build_model(settings.model).to(device)
    seconds = {}
    for g in group_sizes:
        joined = concatenated_batches(last["batches"], g * settings.batch_size)
        times = []
        for _ in range(repeats):
            model.load_state_dict(last["global_state"])
            started = time.perf_counter()
            train_epochs(model, joined, make_optimizer(model, settings), epochs=1, n_inputs=n_inputs, device=device)
            times.append(time.perf_counter() - started)
        seconds[g] = min(times)
    return seconds
