"""Each canary's score after training: how strongly the run says "this canary was in".

``gradient_scores`` (sample audits, white-box): the sums over every step of every round that each hospital's
gradient canaries wrote (simulations/audit/gradient_canaries.py): <release minus the node's own records'
clipped sum, e_i>, and <release, e_i> for comparison. ``client_scores``: the cosine between canary
node i's direction and the final model delta; the initial model is the one the canary nodes received in
round 1 (written by simulations/audit/canary_app.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class GradientScores:
    scores: np.ndarray  # per canary: sum over steps of <release - own records' clipped sum, e_i>
    released: np.ndarray  # per canary: sum over steps of <release, e_i>
    inclusions: np.ndarray  # per canary: the steps it was Poisson-sampled into (revealed after training)
    steps: dict[str, int]  # per hospital: the steps its canaries saw, over the run
    sample_rates: dict[str, float]  # per hospital: its q
    clipping_norms: dict[str, float]  # per hospital: its C


def gradient_scores(plan: dict[str, Any], plan_file: Path) -> GradientScores:
    """Every hospital's per-round lines, summed per canary (a hospital that never trained adds nothing)."""
    from simulations.audit.plan import updates_path

    m = len(plan["canaries"])
    out = GradientScores(np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64), {}, {}, {})
    for node in sorted({c["node"] for c in plan["canaries"]}):
        path = updates_path(plan_file, node)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            out.scores[entry["canaries"]] += np.asarray(entry["scores"])
            out.released[entry["canaries"]] += np.asarray(entry["released"])
            out.inclusions[entry["canaries"]] += np.asarray(entry["inclusions"], dtype=np.int64)
            out.steps[str(node)] = out.steps.get(str(node), 0) + int(entry["steps"])
            out.sample_rates[str(node)] = float(entry["sample_rate"])
            out.clipping_norms[str(node)] = float(entry["clipping_norm"])
    return out


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
