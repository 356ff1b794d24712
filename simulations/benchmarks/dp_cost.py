"""Benchmark: what sample-level DP-SGD costs in time, memory and accuracy.

    python -m simulations.benchmarks.dp_cost [--steps 20] [--no-accuracy] [--out runs/bench-dp]

1. Time per local step (forward, backward, optimizer) for the face and voice
   models, without DP and under Opacus (per-sample gradients, clipping,
   noise), their ratio, and the peak resident memory of each, every
   measurement in a fresh process so peaks do not mix.
2. Global accuracy of a short face simulation with the DP recipe
   (configs/quickstart_dp.toml: 4 hospitals, 2,000 faces each, 12 rounds) at
   epsilon 1, 3 and 8, the same recipe without DP, and the plain quickstart
   recipe (configs/quickstart.toml) without DP, each with the majority-class
   rate of the same test rows (what a model that learned nothing scores).

Prints a table and writes ``<out>/benchmark_dp.json``. Figures, not tests.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

MODELS = {"face_cnn": ("face", 32), "voice_crnn": ("voice", 16)}


def _inputs(task: str, batch: int):
    import torch

    if task == "face":
        return (torch.rand(batch, 1, 48, 48),)
    return torch.randn(batch, 6, 128, 32) * 10 - 40, torch.ones(batch, 6, dtype=torch.bool)


def _time_steps(model_name: str, private: bool, steps: int, queue) -> None:
    """Runs in a fresh process: ms per step and peak RSS (MiB) of ``steps`` training steps."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from shared_models.registry import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    task, batch = MODELS[model_name]
    inputs = _inputs(task, batch * 4)
    labels = torch.randint(0, 7, (batch * 4,))
    loader = DataLoader(TensorDataset(*inputs, labels), batch_size=batch)
    model = build_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if private:
        from opacus import PrivacyEngine

        model, optimizer, loader = PrivacyEngine(accountant="prv").make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False)
    batches = list(loader)
    started, done = None, 0
    while done < steps + 2:
        for *xs, y in batches:
            if done == 2:
                started = time.perf_counter()  # two warm-up steps
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(*xs), y).backward()
            optimizer.step()
            done += 1
            if done == steps + 2:
                break
    ms = (time.perf_counter() - started) / steps * 1000
    queue.put((ms, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def step_costs(steps: int) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for name in MODELS:
        row = {"batch": MODELS[name][1]}
        for private in (False, True):
            queue = ctx.Queue()
            proc = ctx.Process(target=_time_steps, args=(name, private, steps, queue))
            proc.start()
            ms, rss = queue.get()
            proc.join()
            key = "dp" if private else "plain"
            row[f"{key}_ms_per_step"], row[f"{key}_peak_rss_mib"] = round(ms, 2), round(rss, 1)
        row["dp_slowdown"] = round(row["dp_ms_per_step"] / row["plain_ms_per_step"], 2)
        out[name] = row
    return out


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
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"step_costs": step_costs(args.steps)}
    print("\nmodel        batch  plain ms/step  DP ms/step  slowdown  plain peak MiB  DP peak MiB")
    for name, r in report["step_costs"].items():
        print(f"{name:<12} {r['batch']:>5}  {r['plain_ms_per_step']:>13}  {r['dp_ms_per_step']:>10}  "
              f"{r['dp_slowdown']:>7}x  {r['plain_peak_rss_mib']:>14}  {r['dp_peak_rss_mib']:>11}")
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
