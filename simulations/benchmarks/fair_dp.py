"""DP without widening the demographic gaps: each fairness lever against plain DP-SGD and no DP, per group.

    python -m simulations.benchmarks.fair_dp [CONFIG ...] [--rounds 8] [--epsilons 8 3] [--out DIR]
    python -m simulations.benchmarks.fair_dp --tabulate RUN_DIR ... [--out DIR]   (runs already made)

No DP and DP-SGD at each epsilon, with the config's model and its fair variant; each final model scored
exactly on the test rows, gaps with the report's intervals. Writes fair_dp.json and fair_dp.md; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FAIR_MODELS = {"face_scatter": "face_scatter_lcn_blur", "voice_stats": "voice_stats_norm"}  # model -> its fair variant
BASE_MODELS = {fair: base for base, fair in FAIR_MODELS.items()}  # (same head, own fixed front end)
NON_DP_MODELS = {"face_scatter": "face_scatter_lcn_blur"}  # model -> its variant that narrows the non-DP gap
BASE_MODELS.update({lever: base for base, lever in NON_DP_MODELS.items()})
ATTRIBUTES = ("race", "age", "sex")


def exact_group_counts(run_dir: Path) -> tuple[float, int, dict[str, dict[str, list]]]:
    """(accuracy, test rows, {attribute: {group: 7x7 counts}}) of the run's final model, exact, on all nodes."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from client.data.fixed_features import feature_dataset, uses_fixed_features
    from client.data.node_data import client_samples
    from client.data.torch_data import NUM_MODEL_INPUTS
    from client.local_training import evaluate
    from client.privacy.group_counts import sample_groups
    from shared_models.demographic_groups import group_schema
    from shared_models.models.registry import build_model
    from shared_models.settings.run_settings import RunSettings

    from simulations.run_config import default_config

    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    # a run made before a key existed ran at that key's default
    settings = RunSettings.from_config({**default_config(), **config["run_config"]})
    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    model.load_state_dict(torch.load(run_dir / "global_model.pt", map_location="cpu", weights_only=True))
    schema = group_schema(settings.dataset)
    total = np.zeros((7, 7), dtype=np.int64)
    groups = {a: np.zeros((len(g), 7, 7), dtype=np.int64) for a, g in schema.items()}
    for pid in range(settings.num_supernodes):
        samples = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes},
                                 str(config["data_dir"]))
        test = feature_dataset(samples.test, model.fixed_features) if uses_fixed_features(model) else samples.test
        counts = evaluate(model, DataLoader(test, batch_size=256), n_inputs=NUM_MODEL_INPUTS[settings.task],
                          device=torch.device("cpu"), groups=sample_groups(samples.test.data, settings.dataset))
        total += counts.confusion.astype(np.int64)
        for a in groups:
            groups[a] += np.asarray(counts.group_confusion[a], dtype=np.int64)
    rows = int(total.sum())
    named = {a: {g: groups[a][i].tolist() for i, g in enumerate(names)} for a, names in schema.items()}
    return float(np.trace(total) / rows) if rows else float("nan"), rows, named


def run_row(run_dir: Path, wall_s: float | None = None) -> dict[str, Any]:
    """One table row: exact accuracy, per attribute the gap (interval) and worst group, and both epsilons."""
    from server.report.fairness import fairness_view

    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["run_config"]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    accuracy, rows, groups = exact_group_counts(run_dir)
    view = fairness_view(groups, min_group_size=config["fairness-min-group-size"],
                         gap_threshold=config["fairness-gap-threshold"])
    if wall_s is None and (run_dir / "summary.json").exists():  # a finished run's own wall clock
        wall_s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("wall_clock_s")
    row: dict[str, Any] = {"run": run_dir.name, "model": config["model"], "dp": config["dp"],
                           "dp_epsilon_budget": config["dp-epsilon"] if config["dp"] else None,
                           "rounds": config["num-server-rounds"], "test_rows": rows, "accuracy": accuracy,
                           "fairness_reweight": config.get("fairness-reweight") or "",
                           "fairness_reweight_power": float(config.get("fairness-reweight-power", 1.0)),
                           "wall_s": wall_s, "attributes": {}}
    eps = [(c.get("dp") or {}).get("epsilon") for r in rounds for c in ((r.get("train") or {}).get("clients") or [])]
    eps = [e for e in eps if isinstance(e, (int, float))]
    row["training_epsilon"] = max(eps) if eps else None
    evals = [v for r in rounds for v in ((r.get("groups_dp") or {}).get("epsilon_by_client") or {}).values()]
    row["eval_epsilon"] = max(evals) if evals else None
    row["extra_statistics_epsilon"] = 0.0  # the fair front end is a fixed per-sample transform: no statistic
    for attribute in ATTRIBUTES:
        item = view.get(attribute)
        if not item or not item.get("accuracy_gap"):
            continue
        gap, worst = item["accuracy_gap"], item["worst_group"]
        row["attributes"][attribute] = {
            "gap": gap.get("value"), "gap_ci": gap.get("difference_ci") or gap.get("ci"),
            "between": gap.get("between"), "worst": worst.get("group"),
            "worst_accuracy": worst.get("accuracy"), "worst_accuracy_ci": worst.get("accuracy_ci")}
    return row


def _pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| run | model | DP epsilon (training / eval counts) | extra epsilon | rounds | accuracy | "
            + " | ".join(f"{a} gap pp [95% CI], worst group acc" for a in ATTRIBUTES) + " | wall clock |")
    lines = [head, "| " + " | ".join(["---"] * (7 + len(ATTRIBUTES))) + " |"]
    for r in rows:
        eps = "no DP" if not r["dp"] else (f"{r['training_epsilon']:.2f} / "
                                          f"{r['eval_epsilon']:.2f}" if r["training_epsilon"] is not None
                                          and r["eval_epsilon"] is not None else f"{r['dp_epsilon_budget']}")
        cells = []
        for a in ATTRIBUTES:
            item = r["attributes"].get(a)
            if not item:
                cells.append("-")
                continue
            ci = item["gap_ci"] or [None, None]
            cells.append(f"{_pp(item['gap'])} [{_pp(ci[0])}, {_pp(ci[1])}], {item['worst']} {item['worst_accuracy']:.3f}")
        wall = f"{r['wall_s']:.0f} s" if r.get("wall_s") else "-"
        extra = "-" if not r["dp"] else f"{r.get('extra_statistics_epsilon') or 0:g}"
        model = r["model"] + (f" + reweight {r['fairness_reweight']} (power {r.get('fairness_reweight_power', 1):g})"
                              if r.get("fairness_reweight") else "")
        lines.append(f"| {r['run']} | {model} | {eps} | {extra} | {r['rounds']} | {r['accuracy']:.3f} | "
                     + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines) + "\n"


def cells(config: str, epsilons: list[float]) -> list[tuple[str, dict[str, Any]]]:
    """(run name, overrides) of every cell for one config."""
    import tomllib

    model = tomllib.loads(Path(config).read_text(encoding="utf-8")).get("model", "")
    model = BASE_MODELS.get(model, model)  # a config that already uses the fair variant: its base is the baseline
    fair = FAIR_MODELS.get(model)
    stem = Path(config).stem
    out = [(f"{stem}-nodp-{model}", {"dp": False, "model": model})]
    if fair:
        out.append((f"{stem}-nodp-{fair}", {"dp": False, "model": fair}))
    if model in NON_DP_MODELS:
        out.append((f"{stem}-nodp-{NON_DP_MODELS[model]}", {"dp": False, "model": NON_DP_MODELS[model]}))
    for eps in epsilons:
        out.append((f"{stem}-eps{eps:g}-{model}", {"dp": True, "dp-epsilon": eps, "model": model}))
        if fair:
            out.append((f"{stem}-eps{eps:g}-{fair}", {"dp": True, "dp-epsilon": eps, "model": fair}))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=[str(REPO / "configs" / "face50_dp.toml")])
    parser.add_argument("--rounds", type=int, default=None, help="num-server-rounds (default: the config's)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0])
    parser.add_argument("--only", nargs="*", default=None, help="run only the cells whose name contains one of these")
    parser.add_argument("--tabulate", nargs="*", default=None, metavar="RUN_DIR", help="tabulate finished runs instead")
    parser.add_argument("--out", default="fair_dp_out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.tabulate is not None:
        rows = [run_row(Path(d)) for d in args.tabulate]
    else:
        from simulations.run_config import parse_overrides
        from simulations.simulate import run_simulation

        base = {"runs-dir": str(out / "runs"), **parse_overrides(args.set)}
        if args.rounds:
            base["num-server-rounds"] = args.rounds
        for config in args.configs:
            for name, overrides in cells(config, args.epsilons):
                if args.only and not any(s in name for s in args.only):
                    continue
                start = time.perf_counter()
                run_dir = run_simulation(config, {**base, **overrides, "run-name": name})
                rows.append(run_row(Path(run_dir), time.perf_counter() - start))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    (out / "fair_dp.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "fair_dp.md").write_text(markdown(rows), encoding="utf-8")
    print(markdown(rows))


if __name__ == "__main__":
    main()
