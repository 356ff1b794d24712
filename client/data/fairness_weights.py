"""Fairness-aware local training: weight each sample's loss by the inverse frequency of its group.

``fairness-reweight = "race"`` gives each training sample ``n / (groups x n_group)`` on its node
(scikit-learn's "balanced"), so each group present contributes equally and the weights average 1.
Refused with ``dp = true``: the weights come from private group counts, so one record changes every
other record's weight and DP-SGD's sensitivity would no longer hold. Details: docs/design_notes.md.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_sample_weight
from torch.utils.data import Dataset

from shared_models.taxonomy import UNKNOWN


def inverse_frequency_weights(groups: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-sample weights (n / (k x n_group)) ** power over the k groups present, rescaled to mean 1; float32.

    Power 1 balances the groups; a higher power (``fairness-reweight-power``) leans harder on the rarest ones."""
    groups = np.asarray([str(g) for g in groups], dtype=object)
    if len(groups) == 0:
        return np.zeros(0, dtype=np.float32)
    weights = compute_sample_weight("balanced", groups) ** power
    return (weights / weights.mean()).astype(np.float32)


class WeightedSamples(Dataset):
    """A node's training samples with their loss weight appended: ``(*inputs, label, va, weight)``."""

    def __init__(self, samples, attribute: str, data=None, power: float = 1.0):
        """``data`` (an EmotionData) holds the demographics when ``samples`` does not (precomputed features)."""
        self.samples = samples
        data = data if data is not None else samples.data
        values = data.demographics.get(attribute, np.full(len(samples), UNKNOWN, dtype=object))
        self.weights = torch.from_numpy(inverse_frequency_weights(values, power))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return (*self.samples[i], self.weights[i])
