"""A node's samples as fixed features, computed once per process for models with a fixed front end.

A model with a ``fixed_features`` transform (``shared_models.models.scatter_models``)
trains only its head; the transform is data-independent and has no
parameters, so a node may apply it to each sample once and train and
evaluate on the stored features, in dataset order (per-group evaluation
relies on it). Without augmentation, as the features are then fixed: the
faces are standardised per sample, so the transform needs nothing from the
other samples, and DP-SGD's per-sample sensitivity is unchanged. No random
draw touches these records at all (``augment`` is off while they are read),
so there is no augmentation stream for a coordinator to rebuild.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader, Dataset


def uses_fixed_features(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "fixed_features", None))


class FeatureRows(Dataset):
    """Stored features (half precision, half the memory) served as float32 ``(features, label, va)`` items."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, va: torch.Tensor):
        self.features, self.labels, self.va = features.half(), labels, va

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.features[i].float(), self.labels[i], self.va[i]


# One simulation actor serves every node in turn: the cache holds all 50 nodes' train and test splits of a
# 50-hospital run (about 7 MB each for faces), so features are computed once per node, not once per round.
@functools.lru_cache(maxsize=128)
def feature_dataset(samples: Dataset, transform) -> FeatureRows:
    """``(features, label, valence/arousal)`` of every face in ``samples``, in order (cached per process)."""
    augment = getattr(samples, "augment", False)
    if augment:
        samples.augment = False  # the stored features are the faces as they are
    try:
        faces, labels, va = [], [], []
        for batch in DataLoader(samples, batch_size=256):
            faces.append(batch[0])
            labels.append(batch[1])
            va.append(batch[2])
    finally:
        samples.augment = augment
    if not faces:
        return FeatureRows(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))
    return FeatureRows(transform(torch.cat(faces)), torch.cat(labels), torch.cat(va))
