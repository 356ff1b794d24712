"""The DP-SGD step a node takes: clip each sample's gradient, sum, noise, scale, account.

``make_private`` (client/privacy/dp_training.py) builds one ``PrivateStep``; ``train_epochs``
(client/local_training.py) hands it each batch's per-sample loss. Clipping is book-keeping when its rules cover
every trained layer (client/privacy/clipping/), else Opacus's hooks; the noise (secret generator), the scaling by
the expected batch size, the accounting and the Poisson loader are Opacus's in both. With book-keeping the
optimizer draws the step's noise first and the clipping adds its scaled sums into it
(``BookKeepingDPOptimizer.noise_first``): the same mechanism, a pass and a buffer fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from client.privacy.clipping.book_keeping import BookKeepingCapture, clip_and_sum
from client.privacy.dp_optimizer import trained_module

BOOK_KEEPING, HOOKS = "book-keeping", "hooks"
CLIPPING = (BOOK_KEEPING, HOOKS)


@dataclass
class PrivateStep:
    """One local round's private training: the wrapped model to run, Opacus's optimizer and Poisson loader."""

    model: nn.Module  # Opacus's wrapper of the trained model: forward through it
    optimizer: DPOptimizer
    loader: DataLoader
    engine: PrivacyEngine
    max_grad_norm: float
    capture: BookKeepingCapture | None = None  # None: Opacus's hooks clip

    @property
    def clipping(self) -> str:
        return HOOKS if self.capture is None else BOOK_KEEPING

    @property
    def module(self) -> nn.Module:
        """The trained model itself (what a node sends)."""
        return trained_module(self.model)

    def step(self, loss_per_sample: torch.Tensor) -> None:
        """Update the model by one DP-SGD step from this batch's loss, one term per sample (empty for an empty
        Poisson batch, whose step is the noise alone). The terms must come from a forward pass of ``model``
        in which every output (every head) reaches them."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.capture is not None:  # the clipped sums go into this step's noise where the optimizer draws it first
            factor = self.optimizer.noise_first()
            clip_and_sum(self.capture, loss_per_sample, self.max_grad_norm, 1.0 if factor is None else factor)
        elif len(loss_per_sample):
            loss_per_sample.mean().backward()  # Opacus's hooks (loss_reduction "mean") rescale to per-sample sums
        else:
            loss_per_sample.sum().backward()  # empty per-sample gradients: Opacus's step is then noise alone
        self.optimizer.step()

    def steps_taken(self) -> int:
        """DP-SGD steps Opacus's accountant counted (each a noisy release)."""
        return int(sum(steps for _, _, steps in self.engine.accountant.history))
