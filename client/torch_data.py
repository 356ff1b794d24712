"""Turn a client's EmotionData rows into torch datasets for its task.

Every item is ``(*model_inputs, label, valence_arousal)``, where the model
inputs are ``(face,)``, ``(features, mask)`` or ``(face, features, mask)``.
One layout for all tasks keeps the training loop and Opacus's per-sample
machinery oblivious to the modality.

Voice clips are decoded once per client process (decoding dominates otherwise)
and turned into log-mel segments per epoch, so train-time augmentation acts on
the waveform, as the recipe prescribes. Clips that fail to decode (unreadable,
NaN/Inf samples, digital silence, too short; ``decode_clip``) are dropped and
counted in ``skipped`` by name, never silently; a node none of whose clips
decode stops with one ``DatasetFormatError`` naming the folder and examples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from client.loaders.audio_files import decode_clip
from client.loaders.base import DatasetFormatError, EmotionData, Skipped, first_skips
from shared_models.audio_features import LogMelConfig, WaveAugment, clip_segments, feature_moments

NUM_MODEL_INPUTS = {"face": 1, "voice": 2, "fusion": 3}
_NO_VA = np.zeros(2, dtype=np.float32)


def _face_tensor(face: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
    """Pixels to [0, 1]; with an rng, a random flip and a small shift (pose jitter)."""
    img = face
    if rng is not None:
        if rng.random() < 0.5:
            img = img[:, ::-1]
        dy, dx = rng.integers(-2, 3, size=2)
        img = np.roll(img, (int(dy), int(dx)), axis=(0, 1))
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


class EmotionSamples(Dataset):
    """A client's samples for one task, with optional train-time augmentation."""

    def __init__(self, data: EmotionData, task: str, *, augment: bool, seed: int,
                 feature_config: LogMelConfig | None = None):
        self.task = task
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.feature_config = feature_config or LogMelConfig()
        self.wave_augment = WaveAugment()
        self.skipped: list[Skipped] = []
        self.waves: list[np.ndarray] = []
        if task in ("voice", "fusion"):
            keep = []
            for row in range(len(data)):
                try:
                    self.waves.append(decode_clip(data.path_of(row)))
                    keep.append(row)
                except DatasetFormatError as err:
                    self.skipped.append(Skipped(str(data.refs[row]), err.problem))
            if len(data) and not keep:
                raise DatasetFormatError(data.root, f"none of this node's {len(data)} clips can be decoded "
                                                    f"(e.g. {first_skips(self.skipped)})")
            data = data.subset(keep)
        elif data.faces is None:
            raise DatasetFormatError(data.root, f"{data.dataset} holds no face images for task {task!r}")
        self.data = data
        self._feature_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.data)

    def reseed(self, seed: int | list[int]) -> None:
        """New augmentation draws for a new round, reproducibly."""
        self.rng = np.random.default_rng(seed)

    def features(self, i: int, augmented: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel segments and mask of clip i; clean features of evaluation sets are cached."""
        if augmented:
            # augment() ends with peak normalisation then gain, so segments() skips re-normalising.
            return self.wave_augment.segments(self.waves[i], self.rng, self.feature_config)
        if self.augment:  # a training set: clean features are needed once (moments), not kept
            return clip_segments(self.waves[i], self.feature_config)
        if i not in self._feature_cache:
            self._feature_cache[i] = clip_segments(self.waves[i], self.feature_config)
        return self._feature_cache[i]

    def feature_moments(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-mel-band sums over all clean clips, for the federation's global normalisation."""
        total_sum, total_sq, total_n = 0.0, 0.0, 0
        for i in range(len(self)):
            s, sq, n = feature_moments(*self.features(i, augmented=False))
            total_sum, total_sq, total_n = total_sum + s, total_sq + sq, total_n + n
        return np.asarray(total_sum), np.asarray(total_sq), int(total_n)

    def __getitem__(self, i: int):
        label = torch.tensor(int(self.data.labels[i]), dtype=torch.long)
        va = self.data.valence_arousal[i] if self.data.valence_arousal is not None else _NO_VA
        va = torch.as_tensor(np.asarray(va, dtype=np.float32))
        rng = self.rng if self.augment else None
        if self.task == "face":
            return _face_tensor(self.data.faces[i], rng), label, va
        features, mask = self.features(i, self.augment)
        if self.task == "voice":
            return features, mask, label, va
        return _face_tensor(self.data.faces[i], rng), features, mask, label, va
