"""The engine benchmark's peers: vectorised clients and Apple's pfl-research on the same client work.

Called by simulations/benchmarks/simulation_engine.py beside the plain loop. ``vectorised_loop``: the loop's
rounds (simulations/benchmarks/loop_bounds.py, phases timed) with training by
simulations/engine/vectorised_clients.py; ``vectorised_groups``: that training alone per group size.
``pfl_loop``: pfl-research 0.6 (``pip install --no-deps pfl==0.6.0``) on the same model, data, optimiser and
rounds; what is not identical is listed in ``PFL_DIFFERENCES`` (written to the JSON).
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from client.data.node_data import client_samples
from client.data.torch_data import NUM_MODEL_INPUTS
from client.local_training import resolve_device
from shared_models.models.registry import build_model
from simulations.benchmarks.loop_bounds import nodes_of, phased_rounds
from simulations.engine.vectorised_clients import optimiser_spec, train_clients
from simulations.run_config import load_run_config
from simulations.synthetic.data_prep import prepare_data

PFL_DIFFERENCES = [
    "pfl's Dataset.iter takes batches in stored order (no shuffle); FedEmo's loaders shuffle every epoch",
    "pfl trains on each node's train tensors drawn once (augmentation fixed at load); FedEmo's datasets draw "
    "augmentation per fetch (the fixed_data rows run all three with augmentation off: the same data)",
    "pfl's FedAvg weights every client's update equally (the iid partitions here are equal-sized to within one "
    "sample, so the aggregate is near-identical) and applies it with a central SGD at learning rate 1.0",
    "pfl evaluates with its metrics (loss and accuracy sums per client); FedEmo's evaluate also computes the "
    "confusion matrix and calibration counts",
]


def load_settings(overrides: dict):
    """The benchmark's run settings, its dataset synthesised if the folder is empty (as a run would)."""
    _, settings = load_run_config(None, overrides)
    prepare_data(settings, check=False)
    return settings


def vectorised_training(global_model, batches, settings, device) -> list[dict[str, torch.Tensor]]:
    """Every client's local training from the global weights in one vectorised computation."""
    trained = train_clients(global_model, batches, optimiser_spec(settings), n_inputs=NUM_MODEL_INPUTS[settings.task],
                            device=device)
    return [state for state, _ in trained]


def vectorised_loop(overrides: dict, threads: int) -> tuple[list[dict[str, float]], dict]:
    """The plain loop's rounds (loop_bounds.phased_rounds) with every client's training vectorised."""
    return phased_rounds(load_settings(overrides), vectorised_training, threads)


def vectorised_groups(settings, last: dict, group_sizes, threads: int) -> dict[int, float]:
    """Seconds to train the last round's clients vectorised in groups of g (``train_clients``' group_size), per g."""
    torch.set_num_threads(threads)
    device = resolve_device(settings.device)
    global_model = build_model(settings.model).to(device)
    global_model.load_state_dict(last["global_state"])
    seconds = {}
    for g in group_sizes:
        started = time.perf_counter()
        train_clients(global_model, last["batches"], optimiser_spec(settings), n_inputs=NUM_MODEL_INPUTS[settings.task],
                      device=device, group_size=g)
        seconds[g] = time.perf_counter() - started
    return seconds


def _tensors(dataset) -> list[torch.Tensor]:
    """A node's dataset as (*inputs, label) tensors, every item fetched once."""
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    return list(batch)


class _PflModule(nn.Module):
    """A FedEmo model with the ``loss`` and ``metrics`` methods pfl's PyTorchModel calls."""

    def __init__(self, inner: nn.Module, n_inputs: int) -> None:
        super().__init__()
        self.inner, self.n_inputs = inner, n_inputs

    def _logits(self, data):
        out = self.inner(*data[:self.n_inputs])
        return out[0] if isinstance(out, tuple) else out

    def loss(self, *data, eval=False):  # noqa: A002 - pfl's keyword
        self.eval() if eval else self.train()
        return nn.functional.cross_entropy(self._logits(data), data[self.n_inputs])

    @torch.no_grad()
    def metrics(self, *data, eval=True):  # noqa: A002
        from pfl.metrics import Weighted
        self.eval()
        logits, labels = self._logits(data), data[self.n_inputs]
        loss = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        return {"loss": Weighted(loss, len(labels)),
                "accuracy": Weighted(float((logits.argmax(1) == labels).sum()), len(labels))}


def pfl_loop(overrides: dict, threads: int) -> list[float]:
    """pfl-research's FedAvg simulation on the same work; seconds per round (one process)."""
    import os
    os.environ.setdefault("PFL_PYTORCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    settings = load_settings(overrides)
    torch.set_num_threads(threads)
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    keep = n_inputs + 1  # inputs and the label
    samples = [client_samples(settings, node, settings.data_dir) for node in nodes_of(settings)]
    train = {i: _tensors(s.train)[:keep] for i, s in enumerate(samples)}
    test = {i: _tensors(s.test)[:keep] for i, s in enumerate(samples)}
    users = list(train)

    def federated(data):
        return FederatedDataset(lambda uid: Dataset(tuple(data[uid]), user_id=str(uid)),
                                get_user_sampler("minimize_reuse", users))

    module = _PflModule(build_model(settings.model), n_inputs)
    optimiser = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.SGD
    extra = ({"weight_decay": settings.weight_decay} if settings.optimizer == "adam" else
             {"momentum": settings.momentum, "weight_decay": settings.weight_decay})
    model = PyTorchModel(module, local_optimizer_create=lambda params, lr: optimiser(params, lr=lr, **extra),
                         central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
    marks = [time.perf_counter()]

    class Clock(TrainingProcessCallback):
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
            marks.append(time.perf_counter())
            return False, type(aggregate_metrics)()

    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(central_num_iterations=settings.num_server_rounds, evaluation_frequency=1,
                                           train_cohort_size=len(users), val_cohort_size=len(users)),
        backend=SimulatedBackend(training_data=federated(train), val_data=federated(test)),
        model=model,
        model_train_params=NNTrainHyperParams(local_num_epochs=settings.local_epochs,
                                              local_learning_rate=settings.learning_rate,
                                              local_batch_size=settings.batch_size),
        model_eval_params=NNEvalHyperParams(local_batch_size=64),
        callbacks=[Clock()], send_metrics_to_platform=False)
    rounds = [b - a for a, b in zip(marks, marks[1:])]
    return rounds


def parameter_count(model_name: str) -> int:
    return sum(p.numel() for p in build_model(model_name).parameters())
