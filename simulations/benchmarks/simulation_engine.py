"""Benchmark: what Flower's simulation engine costs, and how client resources change it.

    python -m simulations.benchmarks.simulation_engine [--clients 50] [--rounds 3] [--out runs/bench]

Runs the same small face federation (every client trains one local epoch and
evaluates, every round) three ways and prints wall-clock figures:

1. ``fedemo simulate`` with 2 CPUs reserved per client (Flower's default);
2. the same with 1 CPU per client (two clients at once on a 2-core machine);
3. the same client work in one plain Python loop, without Flower: the floor.

Results also go to ``<out>/benchmark.json``. Figures, not assertions: speed
belongs here, not in timed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from client.local_training import evaluate, make_optimizer, train_epochs
from client.node_data import client_samples
from client.torch_data import NUM_MODEL_INPUTS
from shared_models.registry import build_model
from simulations.run_config import load_run_config
from simulations.simulate import run_simulation


def plain_loop(overrides: dict) -> float:
    """The federation's client work (train + evaluate per client per round) in one process."""
    _, settings = load_run_config(None, overrides)
    torch.set_num_threads(settings.client_threads)
    started = time.time()
    global_model = build_model(settings.model)
    for _ in range(settings.num_server_rounds):
        states = []
        for pid in range(settings.num_supernodes):
            samples = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes},
                                     settings.data_dir)
            model = build_model(settings.model)
            model.load_state_dict(global_model.state_dict())
            loader = DataLoader(samples.train, batch_size=settings.batch_size, shuffle=True)
            train_epochs(model, loader, make_optimizer(model, settings), epochs=settings.local_epochs,
                         n_inputs=NUM_MODEL_INPUTS[settings.task], device=torch.device("cpu"))
            states.append((len(samples.train), model.state_dict()))
        total = sum(n for n, _ in states)
        global_model.load_state_dict({k: sum(n * s[k].float() for n, s in states) / total for k in states[0][1]})
        for pid in range(settings.num_supernodes):
            samples = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes},
                                     settings.data_dir)
            evaluate(global_model, DataLoader(samples.test, batch_size=64), n_inputs=1, device=torch.device("cpu"))
    return time.time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples-per-client", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    base = {"data-dir": str(out / "data"), "runs-dir": str(out / "runs"), "synth-samples": args.clients * args.samples_per_client,
            "num-supernodes": args.clients, "min-available-nodes": args.clients, "num-server-rounds": args.rounds,
            "local-epochs": 1, "partitioner": "iid", "min-partition-size": 5}
    results = {"clients": args.clients, "rounds": args.rounds, "samples_per_client": args.samples_per_client,
               "cpu_count": os.cpu_count()}
    for cpus in (2.0, 1.0):
        started = time.time()
        run_simulation(None, {**base, "client-num-cpus": cpus, "run-name": f"cpus-{cpus:g}-{int(started)}"})
        results[f"flower_{cpus:g}_cpus_per_client_s"] = round(time.time() - started, 1)
    results["plain_loop_s"] = round(plain_loop(base), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.clients} clients x {args.rounds} rounds, {args.samples_per_client} samples each, "
          f"{os.cpu_count()} CPUs")
    print(f"  Flower simulation, 2 CPUs per client : {results['flower_2_cpus_per_client_s']:7.1f} s")
    print(f"  Flower simulation, 1 CPU per client  : {results['flower_1_cpus_per_client_s']:7.1f} s")
    print(f"  plain loop, no Flower                : {results['plain_loop_s']:7.1f} s")


if __name__ == "__main__":
    main()
