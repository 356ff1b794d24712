"""Local training and evaluation loops, shared by the ClientApp and the centralised baseline.

Evaluation returns counts, not per-sample outputs: a confusion matrix and the
sufficient statistics of the concordance correlation (sums of predictions,
targets, their squares and products). Counts can be summed across hospitals
to give exactly the pooled metric, and they reveal far less than predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from shared_models import messages as msgs
from shared_models.calibration_bins import CALIBRATION_BINS, CALIBRATION_FIELDS, bin_counts
from shared_models.taxonomy import NUM_EMOTIONS
from shared_models.models.voice_models import ccc_loss

if TYPE_CHECKING:  # Opacus loads only under DP
    from client.privacy.private_step import PrivateStep

# The one research seam (docs/design_notes.md "The audit's seam"): the sample-level audit's ClientApp
# (simulations/audit/canary_app.py) sets it around one train message to add gradient canaries to the steps of
# the optimizer it is handed. Default None: training untouched. No product entry point sets it
# (tests/test_audit_sample.py checks).
STEP_OBSERVER: ContextVar[Callable[[torch.optim.Optimizer, DataLoader, "PrivateStep | None"], None] | None] = \
    ContextVar("fedemo_step_observer", default=None)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, so the same config runs on a laptop and a GPU box."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def make_optimizer(model: nn.Module, settings) -> torch.optim.Optimizer:
    """The local optimizer a run config names; created fresh each round (clients keep no state)."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=settings.learning_rate, momentum=settings.momentum,
                           weight_decay=settings.weight_decay)


def _split_batch(batch, n_inputs: int, device: torch.device):
    inputs = tuple(t.to(device, non_blocking=True) for t in batch[:n_inputs])
    return inputs, batch[n_inputs].to(device), batch[n_inputs + 1].to(device)


def _forward(model: nn.Module, inputs):
    """Logits and (optional) valence/arousal predictions from any FedEmo model."""
    out = model(*inputs)
    return out if isinstance(out, tuple) else (out, None)


def train_epochs(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                 epochs: int, n_inputs: int, device: torch.device, va_weight: float = 1.0,
                 private: PrivateStep | None = None) -> dict[str, float]:
    """Local training; returns mean loss and the number of samples seen.

    Under DP-SGD (``private``, from ``client.privacy.dp_training.make_private``, whose model, loader and
    optimizer are passed) every Poisson batch is a step, even an empty one: skipping it would reveal that the
    batch was empty, and the accountant assumes each step released a noisy update. The loss is then one term per
    sample, and the valence/arousal loss a per-sample MSE, because CCC uses batch statistics and would tie one
    sample's gradient to the others, defeating per-sample clipping.

    Items with one more field than ``(*inputs, label, va)`` carry a per-sample
    loss weight (``client.data.fairness_weights``): the classification loss is then
    the mean of weight x cross-entropy, still one term per sample.
    """
    if private is not None and (private.model is not model or private.optimizer is not optimizer):
        raise ValueError("train_epochs: under DP pass the private step's own model and optimizer")
    observer = STEP_OBSERVER.get()
    if observer is not None:
        observer(optimizer, loader, private)
    model.train()
    criterion = nn.CrossEntropyLoss()
    total_loss, seen = 0.0, 0
    for _ in range(epochs):
        for batch in loader:
            inputs, labels, va = _split_batch(batch, n_inputs, device)
            weights = batch[n_inputs + 2].to(device) if len(batch) > n_inputs + 2 else None
            if len(labels) == 0 and private is None:
                continue
            if private is None:  # a private step clears them itself, right before it clips
                optimizer.zero_grad(set_to_none=True)
            logits, va_pred = _forward(model, inputs)
            if private is not None:  # mean(w x CE) + va_weight x MSE, one term per sample (every head in it)
                per_sample = nn.functional.cross_entropy(logits, labels, reduction="none")
                if weights is not None:
                    per_sample = per_sample * weights
                if va_pred is not None:
                    per_sample = per_sample + va_weight * nn.functional.mse_loss(va_pred, va, reduction="none").mean(1)
                private.step(per_sample)
                total_loss += float(per_sample.detach().sum())
                seen += len(labels)
                continue
            if weights is not None:
                loss = (nn.functional.cross_entropy(logits, labels, reduction="none") * weights).mean()
            else:
                loss = criterion(logits, labels)
            if va_pred is not None:
                loss = loss + va_weight * ccc_loss(va_pred, va)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(labels)
            seen += len(labels)
    return {msgs.TRAIN_LOSS: total_loss / max(seen, 1), msgs.TRAIN_SAMPLES: float(seen)}


@dataclass
class EvalCounts:
    """What a client reports after evaluating: sums that aggregate exactly."""

    loss_sum: float
    n: int
    confusion: np.ndarray  # (7, 7) int64, rows = true class, columns = predicted
    va_moments: np.ndarray | None = None  # (2, 5): per dimension sum p, sum t, sum pp, sum tt, sum pt
    group_confusion: dict[str, np.ndarray] | None = None  # attribute -> (groups, 7, 7) int64, per demographic group
    # (bins, 3) float: per confidence bin correct, incorrect, confidence sum (shared_models/calibration_bins.py)
    calibration: np.ndarray | None = None
    group_calibration: dict[str, np.ndarray] | None = None  # attribute -> (groups, bins, 3), per demographic group


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, n_inputs: int, device: torch.device,
             groups: dict[str, tuple[np.ndarray, int]] | None = None) -> EvalCounts:
    """Counts of one pass over ``loader``.

    ``groups`` maps a demographic attribute to (group index of every sample in
    loader order, number of groups); it adds one confusion matrix and one set of
    calibration bins per group, so the loader must not shuffle. The calibration
    bins count the top-class softmax probability of every prediction.
    """
    if groups and not isinstance(loader.sampler, SequentialSampler):
        raise ValueError("per-group evaluation needs a loader in dataset order (shuffle=False)")
    model.eval()
    group_confusion = {attr: np.zeros((size, NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
                       for attr, (_, size) in (groups or {}).items()}
    criterion = nn.CrossEntropyLoss(reduction="sum")
    confusion = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    cells = (CALIBRATION_BINS, len(CALIBRATION_FIELDS))
    calibration = np.zeros(cells)
    group_calibration = {attr: np.zeros((size, *cells)) for attr, (_, size) in (groups or {}).items()}
    loss_sum, n = 0.0, 0
    va_moments = None
    for batch in loader:
        inputs, labels, va = _split_batch(batch, n_inputs, device)
        logits, va_pred = _forward(model, inputs)
        loss_sum += float(criterion(logits, labels))
        n += len(labels)
        pred = logits.argmax(dim=1).cpu().numpy()
        true = labels.cpu().numpy()
        np.add.at(confusion, (true, pred), 1)
        confidence = logits.double().softmax(dim=1).max(dim=1).values.cpu().numpy()
        calibration += bin_counts(confidence, pred == true)
        for attr, (codes, _) in (groups or {}).items():
            batch_codes = codes[n - len(true):n]
            np.add.at(group_confusion[attr], (batch_codes, true, pred), 1)
            for g in np.unique(batch_codes):
                in_group = batch_codes == g
                group_calibration[attr][g] += bin_counts(confidence[in_group], (pred == true)[in_group])
        if va_pred is not None:
            p, t = va_pred.double().cpu(), va.double().cpu()
            moments = torch.stack([p.sum(0), t.sum(0), (p * p).sum(0), (t * t).sum(0), (p * t).sum(0)], dim=1)
            va_moments = moments.numpy() if va_moments is None else va_moments + moments.numpy()
    return EvalCounts(loss_sum=loss_sum, n=n, confusion=confusion, va_moments=va_moments,
                      group_confusion=group_confusion if groups else None, calibration=calibration,
                      group_calibration=group_calibration if groups else None)
