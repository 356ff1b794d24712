"""What is learned and from which data: task, dataset, model, partitions, audio feature normalisation."""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.datasets import DATASETS, MODELS, TASKS
from shared_models.settings.checks import need

PARTITIONERS = ("iid", "dirichlet", "natural", "demographic")


@dataclass(frozen=True)
class DataSettings:
    task: str
    dataset: str
    data_dir: str
    synthesize_if_missing: bool
    synth_samples: int
    model: str
    valence_arousal: bool
    partitioner: str
    dirichlet_alpha: float
    demographic_attribute: str
    demographic_alpha: float
    min_partition_size: int
    test_fraction: float
    seed: int
    feature_normalisation: str
    feature_fixed_mean: float
    feature_fixed_std: float

    def check(self) -> None:
        need(self, self.task in TASKS, "task", f"choose one of {', '.join(TASKS)}")
        need(self, self.dataset in DATASETS, "dataset", f"choose one of {', '.join(DATASETS)}")
        need(self, self.model in MODELS, "model", f"choose one of {', '.join(MODELS)}")
        need(self, MODELS[self.model].task == self.task, "model",
             f"serves task {MODELS[self.model].task!r}, not {self.task!r}")
        need(self, self.task in DATASETS[self.dataset].tasks, "dataset", f"cannot serve task {self.task!r}")
        need(self, not (self.valence_arousal and self.task == "face"), "valence-arousal",
             "the face datasets have no valence/arousal targets")
        need(self, not self.valence_arousal or MODELS[self.model].valence_arousal, "valence-arousal",
             f"model {self.model!r} has no valence/arousal head; models with one: "
             f"{', '.join(sorted(name for name, model in MODELS.items() if model.valence_arousal))}")
        need(self, self.partitioner in PARTITIONERS, "partitioner", f"choose one of {', '.join(PARTITIONERS)}")
        need(self, self.dirichlet_alpha > 0, "dirichlet-alpha", "must be > 0")
        need(self, self.demographic_alpha > 0, "demographic-alpha", "must be > 0")
        need(self, self.min_partition_size >= 2, "min-partition-size", "must be >= 2 (a train and a test sample)")
        need(self, 0 < self.test_fraction < 1, "test-fraction", "must be between 0 and 1")
        need(self, self.synth_samples > 0, "synth-samples", "must be > 0")
        need(self, 0 <= self.seed < 2**32, "seed", "must be in [0, 2**32) (numpy's seeds are unsigned 32-bit)")
        need(self, self.feature_normalisation in ("auto", "federated", "fixed"), "feature-normalisation",
             "choose auto, federated or fixed")
        need(self, self.feature_fixed_std > 0, "feature-fixed-std", "must be > 0")
