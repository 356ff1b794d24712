"""The one table of what FedEmo learns from what: tasks, the datasets that serve each, the models for each.

The run settings check a config against it (shared_models/settings/data.py), the node's loaders pick a
reader by its dataset names (client/data/loaders/registry.py) and the model registry builds its models
from its model names (shared_models/models/registry.py). A new dataset or model gets its row here first;
the loader or constructor registry refuses to import while the two disagree. No torch: a config is
checked before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS: tuple[str, ...] = ("face", "voice", "fusion")  # fusion: a face frame and a voice clip per sample


@dataclass(frozen=True)
class Dataset:
    title: str               # as error messages and `fedemo data check` name the published format
    tasks: tuple[str, ...]   # the tasks it can serve


@dataclass(frozen=True)
class Model:
    task: str
    valence_arousal: bool    # has a valence/arousal head (the face datasets carry no such labels)


# Fusion needs paired face frames, which CREMA-D provides once a frame per clip is extracted into FaceFrames/.
DATASETS: dict[str, Dataset] = {
    "fer2013": Dataset("FER2013 (fer2013.csv)", ("face",)),
    "rafdb": Dataset("RAF-DB basic", ("face",)),
    "cremad": Dataset("CREMA-D (AudioWAV + VideoDemographics.csv)", ("voice", "fusion")),
    "ravdess": Dataset("RAVDESS speech (Actor_XX/*.wav)", ("voice",)),
}

MODELS: dict[str, Model] = {
    "face_cnn": Model("face", False),
    "face_resnet": Model("face", False),
    "face_scatter": Model("face", False),  # fixed scattering + linear head: the DP model
    "face_scatter_lcn": Model("face", False),  # the same after local contrast normalisation: the fair DP model
    "face_scatter_lcn_blur": Model("face", False),  # the same after a 1-pixel low-pass: the fair non-DP model
    "voice_crnn": Model("voice", True),
    "voice_stats": Model("voice", False),  # fixed clip statistics + linear head: the DP model
    "voice_stats_norm": Model("voice", False),  # the same, each clip's statistics standardised: the fair DP model
    "fusion": Model("fusion", True),
}

# task -> the datasets that can feed it, in the table's order
TASK_DATASETS: dict[str, tuple[str, ...]] = {
    task: tuple(name for name, dataset in DATASETS.items() if task in dataset.tasks) for task in TASKS}


def same_names(registry: str, names, table: dict) -> None:
    """Refuse a registry (loaders, model constructors) whose names differ from this table's."""
    if set(names) != set(table):
        raise ImportError(f"{registry} and shared_models/datasets.py name different entries: "
                          f"only in {registry}: {sorted(set(names) - set(table))}, "
                          f"only in the table: {sorted(set(table) - set(names))}")

