"""Benchmark: what sample-level DP-SGD costs in time, memory and accuracy.

    python -m simulations.benchmarks.dp_cost [--steps 20] [--min-seconds 2] [--repeats 1] [--no-accuracy]
        [--models face_cnn ...] [--modes book-keeping hooks] [--out runs/bench-dp]

Time per local step as a node takes it, without DP and under DP-SGD with each clipping path (book-keeping,
Opacus's hooks), paired epochs in a fresh process per (model, path), ``--repeats`` such processes; the slowdown
is the ratio of CPU times (the wall-clock one beside it); then a short face simulation's accuracy
at epsilon 1, 3, 8 and without DP. Prints a table, writes ``<out>/benchmark_dp.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

# model -> (task, batch, optimizer): face_cnn (the default config), voice_crnn and fusion at their non-DP configs'
# settings; the face_scatter family (face50_dp's model: face_scatter_lcn_blur) and the voice_stats pair (voice50_dp's:
# voice_stats_norm) as the DP configs train them (configs/face50_dp.toml, voice50_dp.toml); face_resnet as face_cnn.
MODELS = {"face_cnn": ("face", 32, "adam"), "voice_crnn": ("voice", 16, "adam"),
          "face_scatter": ("face", 64, "sgd"), "face_scatter_lcn": ("face", 64, "sgd"),
          "face_scatter_lcn_blur": ("face", 64, "sgd"),
          "voice_stats": ("voice", 8, "sgd"), "voice_stats_norm": ("voice", 8, "sgd"),
          "face_resnet": ("face", 32, "adam"), "fusion": ("fusion", 16, "adam")}
DP_MODES = ("book-keeping", "hooks")  # client.privacy.private_step.CLIPPING


def _dataset(model_name: str, n: int):
    """What a node trains on: faces, cached fixed features (face_scatter, face_scatter_lcn), or log-mel segments +
    mask."""
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (n,), generator=generator)
    va = torch.rand(n, 2, generator=generator) * 2 - 1
    if model_name.startswith("face_scatter"):  # the node computes its fixed features once, then serves them
        from client.data.fixed_features import FeatureRows
        from shared_models.models.registry import build_model

        faces = torch.rand(n, 1, 48, 48, generator=generator)
        return FeatureRows(build_model(model_name).fixed_features(faces), labels, va), 1
    faces = (torch.rand(n, 1, 48, 48, generator=generator),) if MODELS[model_name][0] in ("face", "fusion") else ()
    if MODELS[model_name][0] == "face":
        return TensorDataset(*faces, labels, va), 1
    x = torch.randn(n, 6, 128, 32, generator=generator) * 10 - 40
    mask = torch.ones(n, 6, dtype=torch.bool)
    mask[::3, 4:] = False  # some shorter clips
    return TensorDataset(*faces, x, mask, labels, va), len(faces) + 2


def _trainer(model_name: str, mode: str, steps: int):
    """A node's local training, ready to run epochs: ``train_epochs`` over a loader of the node's kind of
    dataset (loading and batching included), under DP after ``client.privacy.dp_training.make_private`` (secret
    Poisson sampling and noise) with clipping path ``mode``."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from client.local_training import train_epochs
    from shared_models.models.registry import build_model

    torch.manual_seed(0)
    _, batch, optimizer_name = MODELS[model_name]
    dataset, n_inputs = _dataset(model_name, batch * steps)
    model = build_model(model_name)
    if hasattr(model, "set_feature_stats"):
        model.set_feature_stats([-40.0] * 128, [10.0] * 128)
    optimizer = (torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer_name == "adam"
                 else torch.optim.SGD(model.parameters(), lr=0.1))
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    dp = None
    if mode != "plain":
        from client.privacy.dp_training import DPPlan, make_private

        plan = DPPlan(noise_multiplier=1.0, sample_rate=1 / len(loader), steps_per_round=len(loader),
                      max_grad_norm=1.0)
        dp = make_private(model, optimizer, loader, plan, accountant="prv", clipping=mode)
        model, optimizer, loader = dp.model, dp.optimizer, dp.loader

    def epoch(data=loader) -> tuple[float, float]:
        """ms per step of one epoch: wall clock and the process's CPU time (which other processes' load on a
        shared machine inflates far less)."""
        if dp is not None and dp.optimizer.noise is not None:
            dp.optimizer.noise.expect(len(data))  # each epoch a round's worth of steps, as make_private plans one
        started, cpu = time.perf_counter(), time.process_time()
        train_epochs(model, data, optimizer, epochs=1, n_inputs=n_inputs, device=torch.device("cpu"), private=dp)
        return ((time.perf_counter() - started) / len(data) * 1000, (time.process_time() - cpu) / len(data) * 1000)

    epoch(DataLoader(Subset(dataset, range(2 * batch)), batch_size=batch))  # warm-up
    return epoch


def _time_steps(model_name: str, mode: str, steps: int, min_seconds: float, queue) -> None:
    """Runs in a fresh process: ms per step of a node's local training and the process's peak RSS (MiB).

    For a DP mode, the same process also trains the non-private twin, alternating epochs with it, so that
    the machine's load hits both alike: the ratio is the median of the paired epochs' ratios. The peak RSS
    is then that of both (the plain run's own is in its own process).
    """
    try:
        import torch

        from client.privacy.node_runtime import start_node_runtime

        torch.set_num_threads(1)
        start_node_runtime()  # as a DP node does before it trains (the plain twin shares the process)
        private = _trainer(model_name, mode, steps)
        plain = _trainer(model_name, "plain", steps) if mode != "plain" else None
        times, cpu_times, ratios, wall_ratios = [], [], [], []
        first = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - first < min_seconds:
            ms, cpu_ms = private()
            times.append(ms)
            cpu_times.append(cpu_ms)
            if plain is not None:
                plain_ms, plain_cpu_ms = plain()
                ratios.append(cpu_ms / plain_cpu_ms)
                wall_ratios.append(ms / plain_ms)
        ratio = (statistics.median(ratios), statistics.median(wall_ratios)) if ratios else (None, None)
        queue.put((statistics.median(times), statistics.median(cpu_times), *ratio,
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None))
    except Exception as error:  # a clipping path that cannot run this model's layers
        reason = str(error).splitlines()[0][:60] if str(error) else ""
        queue.put((None, None, None, None, None, f"{type(error).__name__}: {reason}"))


def _measure(name: str, mode: str, steps: int, min_seconds: float, repeats: int) -> dict:
    """``repeats`` fresh processes of ``_time_steps``: medians over them, and each one's CPU-time ratio."""
    ctx = mp.get_context("spawn")
    runs = []
    for _ in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(target=_time_steps, args=(name, mode, steps, min_seconds, queue))
        proc.start()
        runs.append(queue.get())
        proc.join()
    errors = [run[-1] for run in runs if run[-1]]
    if errors:
        return {"error": errors[0]}
    ms, cpu_ms, ratios, wall_ratios, rss, _ = zip(*runs)
    cell = {"ms_per_step": round(statistics.median(ms), 2), "cpu_ms_per_step": round(statistics.median(cpu_ms), 2),
            "peak_rss_mib": round(max(rss), 1)}
    if ratios[0] is not None:
        cell["slowdown"] = round(statistics.median(ratios), 2)  # CPU time, median over the runs
        cell["wall_slowdown"] = round(statistics.median(wall_ratios), 2)
        cell["slowdown_runs"] = [round(r, 2) for r in ratios]
    return cell


def step_costs(steps: int, models=tuple(MODELS), modes=DP_MODES, min_seconds: float = 2.0, repeats: int = 1) -> dict:
    out = {}
    from client.privacy.clipping.book_keeping import book_keeping_layers
    from shared_models.models.registry import build_model

    for name in models:
        node_mode = "book-keeping" if book_keeping_layers(build_model(name)) is not None else "hooks"  # make_private's
        row = {"batch": MODELS[name][1], "optimizer": MODELS[name][2], "node_mode": node_mode}
        for mode in ("plain", *modes):
            row[mode] = _measure(name, mode, steps, min_seconds, repeats if mode != "plain" else 1)  # ratios: DP runs
        out[name] = row
    return out


def print_step_costs(costs: dict) -> None:
    print("\nms per local step (node code path, 1 thread, wall clock); in brackets DP / plain in CPU time, the median"
          " ratio of epochs alternated with a plain twin in the same process (wall-clock ratio after the slash);"
          " * the mode a node uses; peak RSS MiB")
    modes = [m for m in DP_MODES if any(m in r for r in costs.values())]
    print(f"{'model':<17}{'batch':>5} {'plain':>8} " + " ".join(f"{m:>22} " for m in modes)
          + "  peak MiB plain/best DP")
    for name, r in costs.items():
        cells = []
        for m in modes:
            c = r.get(m, {})
            mark = "*" if m == r.get("node_mode") else " "
            cells.append(f"{c['ms_per_step']:>7} ({c['slowdown']:>4}x/{c['wall_slowdown']:>4}){mark}" if "slowdown" in c
                         else f"{'n/a':>22} ")
        dp = [r[m] for m in modes if "slowdown" in r.get(m, {})]
        best = min(dp, key=lambda c: c["slowdown"]) if dp else {}
        print(f"{name:<17}{r['batch']:>5} {r['plain'].get('ms_per_step', 'n/a'):>8} " + " ".join(cells)
              + f"  {r['plain'].get('peak_rss_mib')}/{best.get('peak_rss_mib')}")
    for name, r in costs.items():
        for m in modes:
            if "error" in r.get(m, {}):
                print(f"  {name} {m}: {r[m]['error']}")


def accuracy_by_epsilon(out: Path) -> dict:
    from simulations.simulate import run_simulation

    configs = Path(__file__).resolve().parents[2] / "configs"
    runs = (("no-dp", "quickstart_dp.toml", {"dp": False}),
            ("eps-8", "quickstart_dp.toml", {"dp-epsilon": 8.0}),
            ("eps-3", "quickstart_dp.toml", {"dp-epsilon": 3.0}),
            ("eps-1", "quickstart_dp.toml", {"dp-epsilon": 1.0}),
            ("no-dp, quickstart recipe", "quickstart.toml", {}))
    results = {}
    for label, config, extra in runs:
        run_name = f"{label.split(',')[0]}-{config.split('.')[0]}-{int(time.time())}"
        run_dir = run_simulation(configs / config, {"data-dir": str(out / f"data-{config.split('.')[0]}"),
                                                    "runs-dir": str(out / "runs"), "run-name": run_name, **extra})
        summary = json.loads((run_dir / "summary.json").read_text())
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        counts = last["confusion"]["counts"]
        majority = max(sum(row) for row in counts) / sum(sum(row) for row in counts)
        results[label] = {"config": config, "accuracy": round(summary["final"]["accuracy"], 3),
                          "macro_f1": round(summary["final"]["macro_f1"], 3), "majority_rate": round(majority, 3),
                          "max_epsilon": (summary.get("privacy") or {}).get("max_epsilon"),
                          "seconds": summary["wall_clock_s"]}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-accuracy", action="store_true", help="skip the four short simulations")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="time each (model, mode) over epochs of --steps steps for at least this long")
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh processes per (model, mode): the table shows medians over them")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(DP_MODES), choices=list(DP_MODES))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"step_costs": step_costs(args.steps, tuple(args.models), tuple(args.modes), args.min_seconds,
                                       args.repeats)}
    print_step_costs(report["step_costs"])
    if not args.no_accuracy:
        report["accuracy"] = accuracy_by_epsilon(out)
        print("\nfaces, 4 hospitals: final global accuracy (macro-F1), majority-class rate of the same test rows")
        for label, r in report["accuracy"].items():
            eps = f"  max eps {r['max_epsilon']:.2f}" if r["max_epsilon"] is not None else ""
            print(f"  {label:<25} {r['accuracy']:.3f} ({r['macro_f1']:.3f})  majority {r['majority_rate']:.3f}  "
                  f"{r['seconds']} s  [{r['config']}]{eps}")
    (out / "benchmark_dp.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
