"""Benchmark: what each simulation backend costs against the compute bound of the same client work.

    python -m simulations.benchmarks.simulation_engine [--clients 50] [--rounds 4] [--model face_cnn voice_stats]
        [--out runs/bench-engine]

One run, side by side so the machine's noise cancels in the ratios, per model: ``fedemo simulate`` on Ray, on
the local backend and on the local backend with vectorised clients, the plain single-process loop (all cores,
and one core for the ideal parallel time), and the peers (simulations/benchmarks/peers.py: vectorised clients,
pfl-research). The loops time each round's fetch, training and evaluation; the compute floor (one model on the
same samples, simulations/benchmarks/loop_bounds.py) and the frontier it sets are measured in the same run. A
round's cost is the mean of the warm rounds; peak memory and, on CUDA, GPU utilisation too. Writes
``<out>/benchmark.json`` with what keeps each comparison from being exact; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from client.local_training import resolve_device
from shared_models.freed_memory import keep_freed_memory
from shared_models.models.registry import model_task
from shared_models.settings.simulation import VECTORISABLE_MODELS
from simulations.benchmarks.loop_bounds import FLOOR_DIFFERENCES, PHASES, compute_floor, loop_training, phased_rounds
from simulations.benchmarks.peers import (PFL_DIFFERENCES, load_settings, parameter_count, pfl_loop,
                                          vectorised_groups, vectorised_loop)
from simulations.engine.vectorised_clients import group_size_for
from simulations.simulate import run_simulation

DATASET_OF_TASK = {"face": "fer2013", "voice": "cremad", "fusion": "cremad"}  # a synthetic dataset per model's task


def plain_loop(overrides: dict, threads: int) -> tuple[list[dict[str, float]], dict]:
    """The federation's client work in one process, one client after another; phases per round, last inputs."""
    return phased_rounds(load_settings(overrides), loop_training, threads)


def totals(rounds: list[dict[str, float]]) -> list[float]:
    return [sum(r.values()) for r in rounds]


def warm_phases(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Mean seconds of each phase over the warm rounds."""
    return {phase: round(warm_mean([r[phase] for r in rounds]), 3) for phase in PHASES}


def round_seconds(run_dir: Path) -> list[float]:
    """Seconds per round from a run's metrics.jsonl (round 0 is the untrained model's evaluation)."""
    elapsed = [json.loads(line)["elapsed_s"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def warm_mean(rounds: list[float]) -> float:
    warm = rounds[1:] or rounds
    return sum(warm) / len(warm)


def floor_and_frontier(base: dict, clients: int, threads: int, workers: int, bound: float, phased: list,
                       last: dict, phased_one: list | None, last_one: dict) -> dict:
    """The compute floor per group size, and the frontier: the loop's fetch and evaluation + the best floor.

    ``frontier_round_s`` is the fastest round any training engine could reach in one process on this data path
    (fetch and evaluation as the loop's, training as the floor's best batching); ``frontier_parallel_s`` the
    same from one-thread phases, divided by the workers (the multi-process ideal).
    """
    settings = load_settings(base)
    sizes = sorted({g for g in (1, 4, 16, clients) if g <= clients})
    floor = compute_floor(settings, last, sizes, threads)
    best = min(floor, key=floor.get)
    phases = warm_phases(phased)
    frontier = phases["fetch"] + floor[best] + phases["evaluate"]
    out = {"threads": threads, "group_sizes": sizes, "batch_rows": {g: g * settings.batch_size for g in sizes},
           "train_s": {g: round(t, 3) for g, t in floor.items()}, "best_group": best,
           "loop_train_s": phases["train"], "frontier_round_s": round(frontier, 3),
           "frontier_ratio_to_plain_loop": round(frontier / bound, 2), "not_identical": FLOOR_DIFFERENCES}
    if phased_one is not None:  # the backends ran: the multi-process ideal's frontier too
        one = floor[best] if phased_one is phased else compute_floor(settings, last_one, [best], threads=1)[best]
        ones = warm_phases(phased_one)
        parallel = (ones["fetch"] + one + ones["evaluate"]) / workers
        out.update({"one_thread_train_s": round(one, 3), "frontier_parallel_s": round(parallel, 3),
                    "frontier_parallel_ratio_to_plain_loop": round(parallel / bound, 2), "workers": workers})
    return out


# What keeps the setups' rounds from being the same computation (the floor's and pfl's lists are their modules').
COMPARISONS = {
    "Flower backends vs the loops": [
        "a Flower run adds the server's strategy, message serialisation, each node's ledgers, records and consent "
        "log, and evaluates through the ClientApps; the loops call the training and evaluation functions directly",
        "round times of a Flower run come from its metrics.jsonl (between the server's evaluations); the loops' "
        "from their own clocks around fetch, training, FedAvg and evaluation"],
    "loops against each other": [
        "every loop fetches through the product's data path, but each draws its own shuffles and augmentation "
        "(the same amount of work, not the same values)",
        "every setup reuses freed memory (shared_models/freed_memory.py, set at the benchmark's start): the loops, "
        "the floor and pfl-research in this process, FedEmo's workers and Ray's actors as the ClientApp loads",
        "the loops run one after another in one invocation: machine load can differ between them (load averages "
        "are recorded per model)"],
}

FLOWER_RUNS = {"ray": {"simulation-backend": "ray"}, "local": {"simulation-backend": "local"},
               "local_vectorised": {"simulation-backend": "local", "vectorised-clients": True}}
RAY_GPU_SHARE = 0.25  # four Ray actors per GPU: with client-num-gpus = 0 Ray hides the GPU from its actors


def flower_run(backend: str, cuda: bool) -> dict:
    """The settings of one Flower setup; on a GPU, Ray's actors get a share of it, as the local backend's
    worker gets the whole GPU, so that the Ray rows are not CPU figures."""
    return {**FLOWER_RUNS[backend], **({"client-num-gpus": RAY_GPU_SHARE} if cuda and backend == "ray" else {})}


def fixed_data_rows(base: dict, threads: int, cuda: bool, flower: bool) -> dict:
    """The local backend, the plain loop and pfl-research with augmentation off: all three then train on the
    same fixed samples (pfl draws its data once at load; FedEmo's nodes cache their clean features), which
    removes the one difference in data between them (PFL_DIFFERENCES); seconds per warm round."""
    fixed = {**base, "augment": False}
    rows: dict = {"loop_warm_round_s": round(warm_mean(totals(plain_loop(fixed, threads)[0])), 3)}
    if flower:
        run_dir = run_simulation(None, {**fixed, **flower_run("local", cuda),
                                        "run-name": f"{base['model']}-local-fixed-{int(time.time())}"})
        rows["local_warm_round_s"] = round(warm_mean(round_seconds(run_dir)), 3)
    try:
        rows["pfl_warm_round_s"] = round(warm_mean(pfl_loop(fixed, threads=threads)), 3)
    except ImportError as err:
        rows["pfl_missing"] = f"pfl-research is not installed ({err})"
    for name in ("local", "pfl"):
        if f"{name}_warm_round_s" in rows:
            rows[f"{name}_ratio_to_loop"] = round(rows[f"{name}_warm_round_s"] / rows["loop_warm_round_s"], 2)
    if "local_warm_round_s" in rows and "pfl_warm_round_s" in rows:
        rows["local_ratio_to_pfl"] = round(rows["local_warm_round_s"] / rows["pfl_warm_round_s"], 2)
    return rows


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
        run_dir = run_simulation(None, {**base, **flower_run(backend, cuda), "run-name": name})
        summary = json.loads((run_dir / "summary.json").read_text())
        rounds = round_seconds(run_dir)
        results[backend] = {"wall_s": round(time.time() - started, 1), "round_s": [round(r, 2) for r in rounds],
                            "warm_round_s": round(warm_mean(rounds), 3), "engine": summary.get("engine", {}),
                            "final_accuracy": summary.get("final", {}).get("accuracy")}
    phased_all, last_all = plain_loop(base, threads=cores)
    phased_one, last_one = plain_loop(base, threads=1) if backends and not cuda else (phased_all, last_all)
    loop_all, loop_one = totals(phased_all), totals(phased_one)
    workers = results["local"]["engine"].get("workers", 1) if "local" in results else cores
    results["bound"] = {"loop_all_cores_round_s": [round(r, 2) for r in loop_all],
                        "loop_one_core_round_s": [round(r, 2) for r in loop_one],
                        "loop_all_cores_phases_s": warm_phases(phased_all),
                        "loop_one_core_phases_s": warm_phases(phased_one),
                        "single_process_bound_s": round(warm_mean(loop_all), 3),
                        "ideal_parallel_s": round(warm_mean(loop_one) / workers, 3)}
    # On a loaded machine torch's threads on every core can be slower than one (they wait for each other):
    # the plain loop is the faster of the two, and the peers run at the thread count that gave it.
    threads = 1 if warm_mean(loop_one) < warm_mean(loop_all) and not cuda else cores
    results["bound"]["plain_loop_s"] = round(min(warm_mean(loop_all), warm_mean(loop_one)), 3)
    results["bound"]["peer_threads"] = threads
    bound = results["bound"]["plain_loop_s"]
    ideal = results["bound"]["ideal_parallel_s"]
    results["floor"] = floor_and_frontier(base, args.clients, threads, workers, bound,
                                          phased_all if threads == cores else phased_one,
                                          last_all if threads == cores else last_one,
                                          phased_one if backends and not cuda else None, last_one)
    vectorised, last_vectorised = vectorised_loop(base, threads=threads)
    groups = vectorised_groups(load_settings(base), last_vectorised, results["floor"]["group_sizes"], threads)
    results["vectorised"] = {"round_s": [round(r, 2) for r in totals(vectorised)],
                             "warm_round_s": round(warm_mean(totals(vectorised)), 3),
                             "phases_s": warm_phases(vectorised),
                             "group_size": group_size_for(resolve_device(load_settings(base).device), args.clients),
                             "train_s_by_group_size": {g: round(t, 3) for g, t in groups.items()}}
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
    if settings.augment:  # the same work on the same data: augmentation off for FedEmo, the loop and pfl alike
        results["fixed_data"] = fixed_data_rows(base, threads, cuda, flower="local" in backends)
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
    print("  the loop's warm round: " + phase_text(r["bound"]["loop_all_cores_phases_s"]) + f" ({cores} threads); "
          + phase_text(r["bound"]["loop_one_core_phases_s"]) + " (one thread)")
    if r["backends"]:
        print(f"  ideal parallel (one-core loop / workers)      : {ideal:7.2f} s per round")
    print_floor(r["floor"], r["batch_size"])
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
              f"the loop" + (f", x{p['ratio_to_pfl']:.2f} pfl-research" if "ratio_to_pfl" in p else "")
              + (f"; {phase_text(p['phases_s'])}" if "phases_s" in p else ""))
        if "train_s_by_group_size" in p:
            print(f"  {'':16s}  groups of {p['group_size']} clients; training the same batches in groups of g: "
                  + ", ".join(f"{g} {t:.2f} s" for g, t in p["train_s_by_group_size"].items()))
    fixed = r.get("fixed_data")
    if fixed:
        parts = [f"plain loop {fixed['loop_warm_round_s']:.2f} s"]
        parts += [f"{label} {fixed[f'{name}_warm_round_s']:.2f} s (x{fixed[f'{name}_ratio_to_loop']:.2f} the loop)"
                  for name, label in (("local", "local backend"), ("pfl", "pfl-research"))
                  if f"{name}_warm_round_s" in fixed]
        print("  the same fixed data (augmentation off): " + ", ".join(parts)
              + (f"; local backend x{fixed['local_ratio_to_pfl']:.2f} pfl-research" if "local_ratio_to_pfl" in fixed
                 else ""))


def phase_text(phases: dict[str, float]) -> str:
    return " + ".join(f"{phase} {phases[phase]:.2f} s" for phase in PHASES)


def print_floor(f: dict, batch_size: int) -> None:
    """The compute floor per group size and the frontier it sets (floor_and_frontier)."""
    sizes = ", ".join(f"{g} ({g * batch_size} rows) {f['train_s'][g]:.2f} s" for g in f["group_sizes"])
    print(f"  compute floor, ONE model on the same samples, batches of g clients' batches ({f['threads']} threads): "
          f"{sizes}; best g = {f['best_group']}; the loop trains in {f['loop_train_s']:.2f} s")
    line = (f"  frontier (the loop's fetch and evaluation + the best floor): {f['frontier_round_s']:7.2f} s per round, "
            f"x{f['frontier_ratio_to_plain_loop']:.2f} the loop")
    if "frontier_parallel_s" in f:
        line += (f"; from one-thread phases over {f['workers']} workers: {f['frontier_parallel_s']:.2f} s, "
                 f"x{f['frontier_parallel_ratio_to_plain_loop']:.2f}")
    print(line)


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
    keep_freed_memory()  # as every FedEmo process does: the in-process loops and peers run under the same malloc
    out = args.out.resolve()
    cores = len(os.sched_getaffinity(0))
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    results: dict = {"clients": args.clients, "rounds": args.rounds, "samples_per_client": args.samples_per_client,
                     "cores": cores, "cuda": cuda, "command": "python -m simulations.benchmarks.simulation_engine "
                     + " ".join(argv if argv is not None else sys.argv[1:]), "models": {},
                     "not_identical": {**COMPARISONS, "compute floor": FLOOR_DIFFERENCES,
                                       "pfl-research": PFL_DIFFERENCES}}
    started = time.time()
    for model in args.model:
        results["models"][model] = bench_model(model, args, out, cores)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")  # each model as it is done
    results["wall_s"] = round(time.time() - started, 1)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in results["models"].values():
        print_model(r, args, cores, cuda)
    print("\nWhat keeps each comparison from being exact:")
    for setup, notes in results["not_identical"].items():
        print(f"  {setup}: " + "; ".join(notes))
    print(f"  written to {out / 'benchmark.json'} ({results['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
