"""Benchmark: what each simulation backend costs against the compute bound of the same client work.

    python -m simulations.benchmarks.simulation_engine [--clients 50] [--rounds 4] [--out runs/bench-engine]

One run, side by side so the machine's noise cancels in the ratios: ``fedemo simulate`` on Ray and on the
local backend, the plain single-process loop (all cores, and one core for the ideal parallel time), and the
peers (simulations/benchmarks/peers.py: vectorised clients, pfl-research). A round's cost is the mean of the
warm rounds; peak memory and, on CUDA, GPU utilisation too. Writes ``<out>/benchmark.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from client.data.node_data import client_samples
from client.data.torch_data import NUM_MODEL_INPUTS
from shared_models.models.registry import build_model, model_task
from simulations.benchmarks.peers import PFL_DIFFERENCES, load_settings, parameter_count, pfl_loop, vectorised_loop
from simulations.run_config import load_run_config
from simulations.simulate import run_simulation

DATASET_OF_TASK = {"face": "fer2013", "voice": "cremad", "fusion": "cremad"}  # a synthetic dataset per model's task


def plain_loop(overrides: dict, threads: int) -> list[float]:
    """The federation's client work in one process; seconds per round."""
    _, settings = load_run_config(None, overrides)
    torch.set_num_threads(threads)
    device = resolve_device(settings.device)
    global_model = build_model(settings.model).to(device)
    model = build_model(settings.model).to(device)  # one model object, each node's round loads the global weights
    nodes = [{"partition-id": pid, "num-partitions": settings.num_supernodes} for pid in range(settings.num_supernodes)]
    rounds = []
    for _ in range(settings.num_server_rounds):
        started = time.perf_counter()
        states = []
        for node in nodes:
            samples = client_samples(settings, node, settings.data_dir)  # cached after round 1, as on a node
            model.load_state_dict(global_model.state_dict())
            loader = DataLoader(samples.train, batch_size=settings.batch_size, shuffle=True)
            train_epochs(model, loader, make_optimizer(model, settings), epochs=settings.local_epochs,
                         n_inputs=NUM_MODEL_INPUTS[settings.task], device=device)
            states.append((len(samples.train), {k: v.detach().clone() for k, v in model.state_dict().items()}))
        total = sum(n for n, _ in states)
        global_model.load_state_dict({k: sum(n * s[k].float() for n, s in states) / total for k in states[0][1]})
        for node in nodes:
            samples = client_samples(settings, node, settings.data_dir)
            evaluate(global_model, DataLoader(samples.test, batch_size=64), n_inputs=NUM_MODEL_INPUTS[settings.task],
                     device=device)
        rounds.append(time.perf_counter() - started)
    return rounds


def round_seconds(run_dir: Path) -> list[float]:
    """Seconds per round from a run's metrics.jsonl (round 0 is the untrained model's evaluation)."""
    elapsed = [json.loads(line)["elapsed_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def warm_mean(rounds: list[float]) -> float:
    warm = rounds[1:] or rounds
    return sum(warm) / len(warm)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples-per-client", type=int, default=50)
    parser.add_argument("--model", default="face_cnn")
    parser.add_argument("--skip-ray", action="store_true", help="only the local backend and the bound")
    parser.add_argument("--skip-flower", action="store_true", help="no Flower run: the loops and pfl only")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-engine"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    base = {"data-dir": str(out / "data"), "runs-dir": str(out / "runs"), "synth-samples": args.clients * args.samples_per_client,
            "num-supernodes": args.clients, "min-available-nodes": args.clients, "num-server-rounds": args.rounds,
            "local-epochs": 1, "partitioner": "iid", "min-partition-size": 5, "model": args.model,
            "client-num-cpus": 1.0, "task": model_task(args.model), "dataset": DATASET_OF_TASK[model_task(args.model)]}
    cores = len(os.sched_getaffinity(0))
    cuda = torch.cuda.is_available()
    settings = load_settings(base)
    results: dict = {"clients": args.clients, "rounds": args.rounds, "samples_per_client": args.samples_per_client,
                     "model": args.model, "parameters": parameter_count(args.model), "optimizer": settings.optimizer,
                     "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
                     "local_epochs": settings.local_epochs, "cores": cores,
                     "load_average_at_start": list(os.getloadavg()),
                     "cuda": torch.cuda.get_device_name(0) if cuda else None}
    backends = [] if args.skip_flower else ["local"] if args.skip_ray else ["ray", "local"]
    for backend in backends:
        name = f"{backend}-{int(time.time())}"
        started = time.time()
        run_dir = run_simulation(None, {**base, "simulation-backend": backend, "run-name": name})
        summary = json.loads((run_dir / "summary.json").read_text())
        rounds = round_seconds(run_dir)
        results[backend] = {"wall_s": round(time.time() - started, 1), "round_s": [round(r, 2) for r in rounds],
                            "warm_round_s": round(warm_mean(rounds), 3), "engine": summary.get("engine", {}),
                            "final_accuracy": summary.get("final", {}).get("accuracy")}
    loop_all = plain_loop(base, threads=cores)
    loop_one = plain_loop(base, threads=1) if backends and not cuda else loop_all  # the ideal is for the backends
    workers = results["local"]["engine"].get("workers", 1) if "local" in results else cores
    results["bound"] = {"loop_all_cores_round_s": [round(r, 2) for r in loop_all],
                        "loop_one_core_round_s": [round(r, 2) for r in loop_one],
                        "single_process_bound_s": round(warm_mean(loop_all), 3),
                        "ideal_parallel_s": round(warm_mean(loop_one) / workers, 3)}
    bound = results["bound"]["single_process_bound_s"]
    ideal = results["bound"]["ideal_parallel_s"]
    vectorised = vectorised_loop(base, threads=cores)
    results["vectorised"] = {"round_s": [round(r, 2) for r in vectorised], "warm_round_s": round(warm_mean(vectorised), 3)}
    try:
        pfl = pfl_loop(base, threads=cores)
        results["pfl"] = {"round_s": [round(r, 2) for r in pfl], "warm_round_s": round(warm_mean(pfl), 3),
                          "not_identical": PFL_DIFFERENCES}
    except ImportError as err:
        results["pfl"] = {"missing": f"pfl-research is not installed ({err}); see pyproject's bench extra"}
    peers = [name for name in ("vectorised", "pfl") if "warm_round_s" in results[name]]
    for backend in backends + peers:
        results[backend]["ratio_to_single_process_bound"] = round(results[backend]["warm_round_s"] / bound, 2)
        if backend in backends:
            results[backend]["ratio_to_ideal_parallel"] = round(results[backend]["warm_round_s"] / ideal, 2)
    if "pfl" in peers:
        results["vectorised"]["ratio_to_pfl"] = round(results["vectorised"]["warm_round_s"] / results["pfl"]["warm_round_s"], 2)
    results["load_average_at_end"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{args.clients} clients x {args.rounds} rounds ({args.model}, {results['parameters']:,} parameters, "
          f"{args.samples_per_client} samples each, {settings.optimizer} lr {settings.learning_rate}, batch "
          f"{settings.batch_size}, {settings.local_epochs} epoch), {cores} cores" + (f", {results['cuda']}" if cuda else ", no GPU")
          + f", load average {results['load_average_at_start'][0]:.1f} at the start")
    print(f"  single-process bound (plain loop, {cores} threads): {bound:7.2f} s per round")
    if backends:
        print(f"  ideal parallel (one-core loop / {workers} workers)  : {ideal:7.2f} s per round")
    for backend in backends:
        r = results[backend]
        memory = r["engine"].get("peak_rss_mib", {})
        line = (f"  {backend:5s} backend: {r['warm_round_s']:7.2f} s per warm round, {r['wall_s']:6.1f} s in all; "
                f"x{r['ratio_to_single_process_bound']:.2f} the single-process bound, "
                f"x{r['ratio_to_ideal_parallel']:.2f} the ideal parallel time")
        if "total" in memory:
            pss = r["engine"].get("final_pss_mib", {})
            line += (f"; peak RSS {memory['total']:.0f} MiB (coordinator {memory['coordinator']:.0f} + workers "
                     f"{memory['workers']}), PSS at the end {pss.get('total', 0):.0f} MiB")
        print(line)
        gpu = r["engine"].get("gpu", {})
        if gpu:
            print(f"        GPU utilisation mean {gpu['gpu_util_mean_pct']}% (max {gpu['gpu_util_max_pct']}%), "
                  f"memory used max {gpu['gpu_memory_used_max_mib']} MiB, torch peak {r['engine'].get('peak_cuda_mib')}")
    for name in ("vectorised", "pfl"):
        r = results[name]
        if "warm_round_s" not in r:
            print(f"  {name}: {r['missing']}")
            continue
        print(f"  {name:10s}: {r['warm_round_s']:7.2f} s per warm round; x{r['ratio_to_single_process_bound']:.2f} the "
              f"single-process bound" + (f", x{r['ratio_to_pfl']:.2f} pfl-research" if "ratio_to_pfl" in r else ""))
    if "not_identical" in results["pfl"]:
        print("  pfl-research's work differs in: " + "; ".join(results["pfl"]["not_identical"]))
    print(f"  written to {out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
