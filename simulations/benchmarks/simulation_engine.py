"""Benchmark: what each simulation backend costs against the compute bound of the same client work.

    python -m simulations.benchmarks.simulation_engine [--clients 50] [--rounds 4] [--model face_cnn voice_stats]
        [--out runs/bench-engine]

One run, side by side so the machine's noise cancels in the ratios, per model: ``fedemo simulate`` on Ray, on
the local backend and on the local backend with vectorised clients, the plain single-process loop (all cores,
and one core for the ideal parallel time), and the peers (simulations/benchmarks/peers.py: vectorised clients, pfl-research). A round's cost is the mean of the
warm rounds; peak memory and, on CUDA, GPU utilisation too. Writes ``<out>/benchmark.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from client.data.node_data import client_samples
from client.data.torch_data import NUM_MODEL_INPUTS
from shared_models.models.registry import build_model, model_task
from shared_models.settings.simulation import VECTORISABLE_MODELS
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


FLOWER_RUNS = {"ray": {"simulation-backend": "ray"}, "local": {"simulation-backend": "local"},
               "local_vectorised": {"simulation-backend": "local", "vectorised-clients": True}}


def bench_model(model: str, args: argparse.Namespace, out: Path, cores: int) -> dict:
    """Every setup on one model's work; seconds per warm round and the ratios."""
    cuda = torch.cuda.is_available()
    base = {"data-dir": str(out / "data" / model), "runs-dir": str(out / "runs"),
            "synth-samples": args.clients * args.samples_per_client,
            "num-supernodes": args.clients, "min-available-nodes": args.clients, "num-server-rounds": args.rounds,
            "local-epochs": 1, "partitioner": "iid", "min-partition-size": 5, "model": model,
            "client-num-cpus": 1.0, "task": model_task(model), "dataset": DATASET_OF_TASK[model_task(model)]}
    settings = load_settings(base)
    results: dict = {"model": model, "parameters": parameter_count(model), "optimizer": settings.optimizer,
                     "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
                     "local_epochs": settings.local_epochs, "load_average_at_start": list(os.getloadavg())}
    backends = ([] if args.skip_flower else ["local", "local_vectorised"] if args.skip_ray
                else ["ray", "local", "local_vectorised"])
    if model not in VECTORISABLE_MODELS:
        backends = [b for b in backends if b != "local_vectorised"]
    for backend in backends:
        name = f"{model}-{backend}-{int(time.time())}"
        started = time.time()
        run_dir = run_simulation(None, {**base, **FLOWER_RUNS[backend], "run-name": name})
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
    # On a loaded machine torch's threads on every core can be slower than one (they wait for each other):
    # the plain loop is the faster of the two, and the peers run at the thread count that gave it.
    threads = 1 if warm_mean(loop_one) < warm_mean(loop_all) and not cuda else cores
    results["bound"]["plain_loop_s"] = round(min(warm_mean(loop_all), warm_mean(loop_one)), 3)
    results["bound"]["peer_threads"] = threads
    bound = results["bound"]["plain_loop_s"]
    ideal = results["bound"]["ideal_parallel_s"]
    vectorised = vectorised_loop(base, threads=threads)
    results["vectorised"] = {"round_s": [round(r, 2) for r in vectorised], "warm_round_s": round(warm_mean(vectorised), 3)}
    try:
        pfl = pfl_loop(base, threads=threads)
        results["pfl"] = {"round_s": [round(r, 2) for r in pfl], "warm_round_s": round(warm_mean(pfl), 3),
                          "not_identical": PFL_DIFFERENCES}
    except ImportError as err:
        results["pfl"] = {"missing": f"pfl-research is not installed ({err}); see pyproject's bench extra"}
    peers = [name for name in ("vectorised", "pfl") if "warm_round_s" in results[name]]
    for setup in backends + peers:
        results[setup]["ratio_to_plain_loop"] = round(results[setup]["warm_round_s"] / bound, 2)
        if setup in backends:
            results[setup]["ratio_to_ideal_parallel"] = round(results[setup]["warm_round_s"] / ideal, 2)
        if "pfl" in peers and setup != "pfl":
            results[setup]["ratio_to_pfl"] = round(results[setup]["warm_round_s"] / results["pfl"]["warm_round_s"], 2)
    results["backends"], results["peers"] = backends, peers
    results["load_average_at_end"] = list(os.getloadavg())
    return results


def print_model(r: dict, args: argparse.Namespace, cores: int, cuda: str | None) -> None:
    print(f"\n{args.clients} clients x {args.rounds} rounds ({r['model']}, {r['parameters']:,} parameters, "
          f"{args.samples_per_client} samples each, {r['optimizer']} lr {r['learning_rate']}, batch "
          f"{r['batch_size']}, {r['local_epochs']} epoch), {cores} cores" + (f", {cuda}" if cuda else ", no GPU")
          + f", load average {r['load_average_at_start'][0]:.1f} at the start, {r['load_average_at_end'][0]:.1f} at the end")
    bound, ideal = r["bound"]["plain_loop_s"], r["bound"]["ideal_parallel_s"]
    print(f"  plain loop, {cores} threads: {r['bound']['single_process_bound_s']:7.2f} s per round; one thread: "
          f"{warm_mean(r['bound']['loop_one_core_round_s']):7.2f} s (peers ran on {r['bound']['peer_threads']})")
    if r["backends"]:
        print(f"  ideal parallel (one-core loop / workers)      : {ideal:7.2f} s per round")
    for backend in r["backends"]:
        b = r[backend]
        memory = b["engine"].get("peak_rss_mib", {})
        line = (f"  {backend:16s}: {b['warm_round_s']:7.2f} s per warm round, {b['wall_s']:6.1f} s in all; "
                f"x{b['ratio_to_plain_loop']:.2f} the loop, x{b['ratio_to_ideal_parallel']:.2f} the ideal"
                + (f", x{b['ratio_to_pfl']:.2f} pfl-research" if "ratio_to_pfl" in b else ""))
        if "total" in memory:
            line += f"; peak RSS {memory['total']:.0f} MiB"
        print(line)
        gpu = b["engine"].get("gpu", {})
        if gpu:
            print(f"        GPU utilisation mean {gpu['gpu_util_mean_pct']}% (max {gpu['gpu_util_max_pct']}%), "
                  f"memory used max {gpu['gpu_memory_used_max_mib']} MiB, torch peak {b['engine'].get('peak_cuda_mib')}")
    for name in ("vectorised", "pfl"):
        p = r[name]
        if "warm_round_s" not in p:
            print(f"  {name}: {p['missing']}")
            continue
        label = {"vectorised": "loop, vectorised", "pfl": "pfl-research"}[name]
        print(f"  {label:16s}: {p['warm_round_s']:7.2f} s per warm round; x{p['ratio_to_plain_loop']:.2f} "
              f"the loop" + (f", x{p['ratio_to_pfl']:.2f} pfl-research" if "ratio_to_pfl" in p else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--samples-per-client", type=int, default=50)
    parser.add_argument("--model", nargs="+", default=["face_cnn", "voice_stats"], help="one run per model")
    parser.add_argument("--skip-ray", action="store_true", help="only the local backend and the bound")
    parser.add_argument("--skip-flower", action="store_true", help="no Flower run: the loops and pfl only")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-engine"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    cores = len(os.sched_getaffinity(0))
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results: dict = {"clients": args.clients, "rounds": args.rounds, "samples_per_client": args.samples_per_client,
                     "cores": cores, "cuda": cuda, "command": "python -m simulations.benchmarks.simulation_engine "
                     + " ".join(argv if argv is not None else sys.argv[1:]), "models": {}}
    started = time.time()
    for model in args.model:
        results["models"][model] = bench_model(model, args, out, cores)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")  # each model as it is done
    results["wall_s"] = round(time.time() - started, 1)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in results["models"].values():
        print_model(r, args, cores, cuda)
    pfl = next((r["pfl"] for r in results["models"].values() if "not_identical" in r["pfl"]), None)
    if pfl:
        print("  pfl-research's work differs in: " + "; ".join(pfl["not_identical"]))
    print(f"  written to {out / 'benchmark.json'} ({results['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
