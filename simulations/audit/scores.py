"""Each canary's score after training: how strongly the final global model says "this canary was in".

``update_scores`` (white-box, what the coordinator sees: each node's sent model) sums, over the rounds, how
much the node's update raised the canary's margin; ``sample_scores`` (black-box: the final global model's
output only) is the margin itself: log p(canary label | x) - log p(true
label | x) for the canary record x. Coin 1 trained on (x, canary label), coin 0 on (x, true label), so the
score moves both ways with the coin (the loss on the canary label alone would see only half of it). ``client_scores``: the cosine between canary
node i's direction and the final model delta; the initial model is the one the canary nodes received in
round 1 (written by simulations/audit/canary_app.py).
"""

from __future__ import annotations

import json
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


def canary_inputs(settings: RunSettings, canaries: list[dict[str, Any]], data_dir: str, model: torch.nn.Module,
                  row_key: str = "row"):
    """The canary records (or with ``row_key="control_row"`` their controls) as the model takes them, in plan order."""
    from client.data.fixed_features import feature_dataset, uses_fixed_features
    from client.data.torch_data import EmotionSamples
    from simulations.audit.plan import full_dataset

    data = full_dataset(settings.dataset, data_dir, settings.task)
    samples = EmotionSamples(data.subset([c[row_key] for c in canaries]), settings.task, augment=False, seed=[0])
    if len(samples) != len(canaries):
        raise RuntimeError(f"{len(canaries) - len(samples)} canary clips did not decode")
    return feature_dataset(samples, model.fixed_features) if uses_fixed_features(model) else samples


def margins(model: torch.nn.Module, dataset, canaries: list[dict[str, Any]], n_inputs: int) -> np.ndarray:
    """log p(canary label | x) - log p(true label | x) for each canary record x under ``model``."""
    from torch.utils.data import DataLoader

    wrong = torch.tensor([c["canary_label"] for c in canaries])
    true = torch.tensor([c["true_label"] for c in canaries])
    out, start = [], 0
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=256):
            logits = model(*batch[:n_inputs])
            logits = (logits[0] if isinstance(logits, tuple) else logits).double().log_softmax(dim=1)
            rows, end = torch.arange(len(logits)), start + len(logits)
            out.append((logits[rows, wrong[start:end]] - logits[rows, true[start:end]]).numpy())
            start = end
    return np.concatenate(out)


def sample_scores(run_dir: Path, settings: RunSettings, plan: dict[str, Any], data_dir: str) -> np.ndarray:
    """Black-box: each canary's margin under the final global model, minus its control's (the same two labels)."""
    from client.data.torch_data import NUM_MODEL_INPUTS

    model, canaries, n_inputs = final_model(run_dir, settings), plan["canaries"], NUM_MODEL_INPUTS[settings.task]
    return (margins(model, canary_inputs(settings, canaries, data_dir, model), canaries, n_inputs)
            - margins(model, canary_inputs(settings, canaries, data_dir, model, "control_row"), canaries, n_inputs))


def update_scores(plan: dict[str, Any], plan_file: Path) -> np.ndarray:
    """White-box (the coordinator's view): each canary's margin gain from its node's sent models, over the rounds.

    Its node wrote, per round, the margin under the model it sent minus that under the global model it got
    (simulations/audit/canary_app.py); the sum removes how hard each record is by nature.
    """
    from simulations.audit.plan import updates_path

    gains = np.zeros(len(plan["canaries"]))
    for node in sorted({c["node"] for c in plan["canaries"]}):
        path = updates_path(plan_file, node)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            gains[entry["canaries"]] += np.asarray(entry["gains"])
    return gains


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
