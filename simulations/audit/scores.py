"""Each canary's score after training: how strongly the final global model says "this canary was in".

``sample_scores`` (black-box: the final global model's output only): log p(canary label | x) - log p(true
label | x) for the canary record x. Coin 1 trained on (x, canary label), coin 0 on (x, true label), so the
score moves both ways with the coin (the loss on the canary label alone would see only half of it). ``client_scores``: the cosine between canary
node i's direction and the final model delta; the initial model is the one the canary nodes received in
round 1 (written by simulations/audit/canary_app.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_models.settings.run_settings import RunSettings

def final_model(run_dir: Path, settings: RunSettings) -> torch.nn.Module:
    from shared_models.models.registry import build_model

    model = build_model(settings.model, valence_arousal=settings.valence_arousal)
    model.load_state_dict(torch.load(run_dir / "global_model.pt", map_location="cpu", weights_only=True))
    return model.eval()


def sample_scores(run_dir: Path, settings: RunSettings, plan: dict[str, Any], data_dir: str) -> np.ndarray:
    from torch.utils.data import DataLoader

    from client.data.fixed_features import feature_dataset, uses_fixed_features
    from simulations.audit.plan import full_dataset
    from client.data.torch_data import NUM_MODEL_INPUTS, EmotionSamples

    model = final_model(run_dir, settings)
    data = full_dataset(settings.dataset, data_dir, settings.task)
    canaries = data.subset([c["row"] for c in plan["canaries"]])
    wrong = torch.tensor([c["canary_label"] for c in plan["canaries"]])
    true = torch.tensor([c["true_label"] for c in plan["canaries"]])
    samples = EmotionSamples(canaries, settings.task, augment=False, seed=[0])
    if len(samples) != len(plan["canaries"]):
        raise RuntimeError(f"{len(plan['canaries']) - len(samples)} canary clips did not decode")
    dataset = feature_dataset(samples, model.fixed_features) if uses_fixed_features(model) else samples
    n_inputs = NUM_MODEL_INPUTS[settings.task]
    margins, start = [], 0
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=256):
            logits = model(*batch[:n_inputs])
            logits = (logits[0] if isinstance(logits, tuple) else logits).double().log_softmax(dim=1)
            rows = torch.arange(len(logits))
            end = start + len(logits)
            margins.append((logits[rows, wrong[start:end]] - logits[rows, true[start:end]]).numpy())
            start = end
    return np.concatenate(margins)


def client_scores(run_dir: Path, plan: dict[str, Any], initial_file: Path) -> np.ndarray:
    from simulations.audit.plan import canary_direction

    initial = np.load(initial_file)
    state = torch.load(run_dir / "global_model.pt", map_location="cpu", weights_only=True)
    names = [n for n in initial.files if np.issubdtype(initial[n].dtype, np.floating)]
    delta = [state[n].double().numpy() - initial[n].astype(np.float64) for n in names]
    norm = np.sqrt(sum(float(np.square(d).sum()) for d in delta)) or 1.0
    scores = []
    for canary in plan["canaries"]:
        direction = canary_direction(canary["seed"], [initial[n].shape for n in names])
        scores.append(sum(float((u * d).sum()) for u, d in zip(direction, delta)) / norm)
    return np.array(scores)
