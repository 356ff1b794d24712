"""Centralised baseline: the same model on the pooled data, to read off the federated gap.

It pools exactly the rows the simulated clients train on and tests on exactly
the rows they test on (same partitioner, same per-client splits, same seed),
and trains for as many passes over the data as the federation makes
(rounds x local epochs x fraction of clients sampled), so the only difference left is federation itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from client.node_data import simulated_split
from client.partitioning import PartitionSpec, partition
from client.loaders.registry import load_dataset
from client.torch_data import NUM_MODEL_INPUTS, EmotionSamples
from server.global_metrics import ccc_from_moments, classification_metrics
from server.run_record import RunRecord
from shared_models.audio_features import combine_moments
from shared_models.registry import build_model
from simulations.data_prep import prepare_data
from simulations.run_config import prepare_run


def pooled_rows(data, settings) -> tuple[np.ndarray, np.ndarray]:
    """Union of all simulated clients' train rows and of their test rows."""
    spec = PartitionSpec.from_settings(settings, settings.num_supernodes)
    train, test = [], []
    for pid, rows in enumerate(partition(data, spec)):
        tr, te = simulated_split(data, rows, settings.test_fraction, settings.seed, pid)
        train.append(tr)
        test.append(te)
    return np.concatenate(train), np.concatenate(test)


def run_centralised(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                    epochs: int | None = None) -> Path:
    _, settings = prepare_run(config_file, overrides, label="centralised")
    torch.manual_seed(settings.seed)
    data_dir = prepare_data(settings)
    # As many passes over the data as the federation makes on average (sampled clients x local epochs).
    epochs = epochs or max(1, round(settings.num_server_rounds * settings.local_epochs * settings.fraction_train))
    record = RunRecord.create(Path(settings.runs_dir), settings.run_name, settings.to_config(),
                              {"data_dir": str(data_dir), "mode": "centralised", "epochs": epochs})
    data = load_dataset(settings.dataset, data_dir, settings.task)
    train_rows, test_rows = pooled_rows(data, settings)
    train = EmotionSamples(data.subset(train_rows), settings.task, augment=settings.augment, seed=settings.seed)
    test = EmotionSamples(data.subset(test_rows), settings.task, augment=False, seed=settings.seed)
    device = resolve_device(settings.device)
    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    if settings.task in ("voice", "fusion"):
        mean, std = combine_moments([train.feature_moments()])
        model.set_feature_stats(torch.as_tensor(mean), torch.as_tensor(std))
    model.to(device)
    optimizer = make_optimizer(model, settings)
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(train, batch_size=settings.batch_size, shuffle=True, generator=generator)
    test_loader = DataLoader(test, batch_size=max(settings.batch_size, 64))
    entry: dict[str, Any] = {}
    for epoch in range(0, epochs + 1):
        stats = {}
        if epoch > 0:
            train.reseed([settings.seed, epoch])
            stats = train_epochs(model, loader, optimizer, epochs=1, n_inputs=n_inputs, device=device)
        counts = evaluate(model, test_loader, n_inputs=n_inputs, device=device)
        entry = {"epoch": epoch, "loss": counts.loss_sum / max(counts.n, 1), "eval_examples": counts.n,
                 **{k.replace("-", "_"): v for k, v in classification_metrics(counts.confusion).items()},
                 **{k.replace("-", "_"): v for k, v in stats.items()}}
        if counts.va_moments is not None:
            entry["ccc_valence"], entry["ccc_arousal"] = ccc_from_moments(counts.va_moments, counts.n)
        record.log_round(entry)
        print(f"[fedemo] centralised epoch {epoch}/{epochs}  loss {entry['loss']:.4f}  "
              f"accuracy {entry['accuracy']:.3f}  macro-F1 {entry['macro_f1']:.3f}", flush=True)
    record.save_weights({k: v.cpu() for k, v in model.state_dict().items()})
    record.write_json("summary.json", {"mode": "centralised", "epochs": epochs, "final": entry,
                                       "train_examples": len(train), "elapsed_s": round(time.time() - record.started, 2)})
    return record.run_dir
