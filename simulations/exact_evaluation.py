"""Exact evaluation of a simulated run's final model: research figures beside the report's noised ones.

Under noised evaluation counts (every shipped DP config) the report's accuracy
is what the coordinator may know: a noised figure with an honest interval, wide
when hospitals hold few test rows. A researcher simulating the federation holds
every node's data anyway, so this rebuilds each simulated node's test split
exactly as the node does (``client.data.node_data.client_samples``) and scores
``global_model.pt`` on it without noise. Nothing here is signed or sent: it
is a research measurement (``fedemo evaluate RUN_DIR``), for simulations only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def exact_evaluation(run_dir: Path) -> dict[str, Any]:
    """Accuracy, macro-F1, UAR, mean loss and ECE of the run's final model on all simulated nodes' test rows,
    and per node: the exact figures beside the report's noised ones (the loss and calibration are what a
    DP recipe's overconfidence shows in; shared_models/calibration_bins.py)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from client.data.fixed_features import feature_dataset, uses_fixed_features
    from client.local_training import evaluate
    from client.data.node_data import client_samples
    from client.data.torch_data import NUM_MODEL_INPUTS
    from server.rounds.global_metrics import classification_metrics
    from shared_models.config_error import ConfigError
    from shared_models.calibration_bins import ece_from_counts, reliability
    from shared_models.models.registry import build_model
    from shared_models.settings.run_settings import RunSettings

    config_path, weights = run_dir / "config.json", run_dir / "global_model.pt"
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no {path.name} (a finished simulation's run folder holds both)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    settings = RunSettings.from_config(config["run_config"])
    data_dir = str(config.get("data_dir") or "")
    if not data_dir:
        raise ConfigError(f"{run_dir}: not a simulation (no shared data folder): hospitals' test rows stay with them")
    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    total = np.zeros((7, 7), dtype=np.int64)
    calibration, loss_sum = None, 0.0
    nodes = {}
    for pid in range(settings.num_supernodes):
        samples = client_samples(settings, {"partition-id": pid, "num-partitions": settings.num_supernodes}, data_dir)
        test = feature_dataset(samples.test, model.fixed_features) if uses_fixed_features(model) else samples.test
        counts = evaluate(model, DataLoader(test, batch_size=256), n_inputs=NUM_MODEL_INPUTS[settings.task],
                          device=torch.device("cpu"))
        total += counts.confusion.astype(np.int64)
        loss_sum += counts.loss_sum
        calibration = counts.calibration if calibration is None else calibration + counts.calibration
        nodes[str(pid)] = {"test_rows": int(counts.n), "accuracy": classification_metrics(counts.confusion)["accuracy"],
                           "ece": ece_from_counts(counts.calibration)}
    metrics = classification_metrics(total)
    rows = int(total.sum())
    return {"run": run_dir.name, "test_rows": rows, "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro-f1"], "uar": metrics["uar"], "loss": loss_sum / rows if rows else float("nan"),
            "ece": ece_from_counts(calibration), "reliability": reliability(calibration),
            "confusion": total.tolist(), "nodes": nodes}


def evaluate_command(args) -> int:
    result = exact_evaluation(args.run)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{result['run']}: exact accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}, "
          f"UAR {result['uar']:.3f}, loss {result['loss']:.3f}, ECE {result['ece']:.3f} on {result['test_rows']} test rows of {len(result['nodes'])} simulated nodes "
          "(research figure: not signed, not part of the report)")
    return 0
