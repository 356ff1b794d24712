"""Centralised baseline: the same model on the pooled data, to read off the federated gap.

It pools exactly the rows the simulated clients train and test on and trains as many passes as the
federation makes, so federation is the only difference left; no DP (it is the no-federation, no-privacy
reference). It writes a run folder like a federated run's (metrics.jsonl per epoch, summary, signed
report, ``mode: centralised``, the pooled test rows' digest), so ``fedemo compare RUN central`` works.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from client.local_training import evaluate, make_optimizer, resolve_device, train_epochs
from client.privacy.group_counts import sample_groups
from client.data.loaders.registry import load_dataset
from client.data.torch_data import NUM_MODEL_INPUTS, EmotionSamples
from server.rounds.global_metrics import ccc_from_moments, classification_metrics
from server.report.build import coordinator_key, write_report
from server.record.run_record import RunRecord
from shared_models.audio_features import combine_moments
from shared_models.models.registry import build_model
from shared_models.demographic_groups import group_schema
from shared_models.taxonomy import EMOTIONS
from simulations.synthetic.data_prep import prepare_data
from simulations.split_digest import pooled_rows, split_digest
from simulations.run_config import prepare_run


def run_centralised(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                    epochs: int | None = None) -> Path:
    _, settings = prepare_run(config_file, overrides, label="centralised")
    torch.manual_seed(settings.seed)
    data_dir = prepare_data(settings)
    # As many passes over the data as the federation makes on average (sampled clients x local epochs).
    epochs = epochs or max(1, round(settings.num_server_rounds * settings.local_epochs * settings.fraction_train))
    data = load_dataset(settings.dataset, data_dir, settings.task, consent_default=settings.consent_default)
    train_rows, test_rows = pooled_rows(data, settings)
    config, not_applied = baseline_config(settings, epochs)
    record = RunRecord.create(Path(settings.runs_dir), settings.run_name, config,
                              {"data_dir": str(data_dir), "mode": "centralised", "epochs": epochs,
                               "not_applied": not_applied, "test_split": split_digest(data, test_rows)})
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
    test_loader = DataLoader(test, batch_size=max(settings.batch_size, 64))  # in order: per-group counts
    groups = sample_groups(test.data, settings.dataset)
    entry: dict[str, Any] = {}
    for epoch in range(0, epochs + 1):
        stats = {}
        if epoch > 0:
            train.reseed([settings.seed, epoch])
            stats = train_epochs(model, loader, optimizer, epochs=1, n_inputs=n_inputs, device=device)
        counts = evaluate(model, test_loader, n_inputs=n_inputs, device=device, groups=groups)
        entry = {"round": epoch, "epoch": epoch, "loss": counts.loss_sum / max(counts.n, 1),
                 "eval_examples": counts.n,
                 **{k.replace("-", "_"): v for k, v in classification_metrics(counts.confusion).items()},
                 **{k.replace("-", "_"): v for k, v in stats.items()},
                 "confusion": {"labels": list(EMOTIONS), "counts": counts.confusion.tolist()},
                 "groups": {attribute: {group: counts.group_confusion[attribute][i].tolist()
                                        for i, group in enumerate(names)}
                            for attribute, names in group_schema(settings.dataset).items()},
                 "evaluate": {"clients": [], "failures": []}, "train": None}
        if counts.va_moments is not None:
            entry["ccc_valence"], entry["ccc_arousal"] = ccc_from_moments(counts.va_moments, counts.n)
        record.log_round(entry)
        print(f"[fedemo] centralised epoch {epoch}/{epochs}  loss {entry['loss']:.4f}  "
              f"accuracy {entry['accuracy']:.3f}  macro-F1 {entry['macro_f1']:.3f}", flush=True)
    record.save_weights({k: v.cpu() for k, v in model.state_dict().items()})
    final = {k: entry[k] for k in ("round", "loss", "accuracy", "macro_f1", "uar", "ccc_valence", "ccc_arousal",
                                   "eval_examples") if k in entry}
    record.write_json("summary.json", {"mode": "centralised", "epochs": epochs, "rounds": epochs,
                                       "planned_rounds": epochs, "final": final, "train_examples": len(train),
                                       "elapsed_s": round(time.time() - record.started, 2)})
    write_report(record.run_dir, coordinator_key(settings.signing_key, settings.runs_dir))
    return record.run_dir


def baseline_config(settings, epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run config the baseline trained under, the federated values it replaced).

    The report reads ``num-server-rounds`` as the rounds planned: here the
    epochs. The baseline trains without any privacy mechanism, so its config
    says so rather than claim the federated config's DP.
    """
    config = settings.to_config()
    replaced = {"num-server-rounds": epochs, "dp": False, "central-dp": "off", "secure-aggregation": False,
                "eval-dp-noise-multiplier": 0.0}
    replaced = {k: v for k, v in replaced.items() if k in config and config[k] != v}
    not_applied = {k: config[k] for k in replaced}
    config.update(replaced)
    return config, not_applied
