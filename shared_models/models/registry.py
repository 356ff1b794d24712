"""Model names used in configs (``model = "face_cnn"``) -> constructors; their tasks come from the one table,
shared_models/datasets.py.

The task says which inputs a model takes: "face" (images), "voice" (log-mel
segments + mask) or "fusion" (both); the data pipeline is chosen from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from shared_models.datasets import MODELS as MODEL_TABLE
from shared_models.datasets import TASKS, same_names
from shared_models.models.face_models import FaceCNN, FaceResNet
from shared_models.models.fusion_model import FusionNet
from shared_models.models.scatter_models import FaceScatterLCNBlurLinear, FaceScatterLCNLinear, FaceScatterLinear
from shared_models.models.voice_models import VoiceCRNN
from shared_models.models.voice_stats_model import VoiceStatsLinear, VoiceStatsNormLinear

__all__ = ["MODELS", "ModelSpec", "build_model", "count_parameters", "model_task"]


@dataclass(frozen=True)
class ModelSpec:
    constructor: Callable[..., nn.Module]
    task: str  # "face" | "voice" | "fusion"
    supports_valence_arousal: bool

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    "face_cnn": FaceCNN, "face_resnet": FaceResNet, "face_scatter": FaceScatterLinear,
    "face_scatter_lcn": FaceScatterLCNLinear, "face_scatter_lcn_blur": FaceScatterLCNBlurLinear,
    "voice_crnn": VoiceCRNN, "voice_stats": VoiceStatsLinear,
    "voice_stats_norm": VoiceStatsNormLinear, "fusion": FusionNet,
}
same_names("shared_models/models/registry.py", CONSTRUCTORS, MODEL_TABLE)
# the table's task and valence/arousal head of each model, with its constructor
MODELS: dict[str, ModelSpec] = {name: ModelSpec(CONSTRUCTORS[name], entry.task, entry.valence_arousal)
                                for name, entry in MODEL_TABLE.items()}


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}") from None


def build_model(name: str, *, valence_arousal: bool = False, **kwargs) -> nn.Module:
    """Instantiate model ``name`` with constructor ``kwargs``.

    Raises ValueError for an unknown name, or when a valence/arousal head is
    requested from a model that has none (face models: their datasets carry no
    continuous affect labels).
    """
    spec = _spec(name)
    if spec.supports_valence_arousal:
        kwargs["valence_arousal"] = valence_arousal
    elif valence_arousal:
        supported = sorted(n for n, s in MODELS.items() if s.supports_valence_arousal)
        raise ValueError(f"model {name!r} has no valence/arousal head; models with one: {', '.join(supported)}")
    return spec.constructor(**kwargs)


def model_task(name: str) -> str:
    """The task ("face" | "voice" | "fusion") model ``name`` serves."""
    return _spec(name).task


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameter elements; buffers excluded."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
