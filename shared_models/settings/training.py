"""Local training on each node: epochs, batches, optimiser, augmentation."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainingSettings:
    local_epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    augment: bool

    def check(self) -> None:
        need(self, self.local_epochs >= 1, "local-epochs", "must be >= 1")
        need(self, self.batch_size >= 1, "batch-size", "must be >= 1")
        need(self, self.optimizer in OPTIMIZERS, "optimizer", "choose adam or sgd")
        need(self, self.learning_rate > 0, "learning-rate", "must be > 0")
        need(self, 0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self, self.weight_decay >= 0, "weight-decay", "must be >= 0")
