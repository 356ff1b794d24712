"""Turn a client's EmotionData rows into torch datasets for its task: ``(*model_inputs, label, valence_arousal)``.

One item layout for every task keeps training and Opacus oblivious to the modality. Voice clips are decoded
once per process and cut into log-mel segments per epoch (augmentation acts on the waveform); clips that
fail to decode are skipped and counted by name. Every augmentation draw is keyed per record and fetch, so
one record never changes another's input; under DP the key is 128 secret bits the coordinator cannot know.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from client.data.loaders.audio_files import decode_clip
from client.data.loaders.base import DatasetFormatError, EmotionData, Skipped, first_skips
from client.data.record_keys import record_keys
from shared_models.preprocessing.faces import face_tensor
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
    return face_tensor(img)  # shared with prediction (shared_models/preprocessing/faces.py)


class AugmentDraws:
    """Per-record augmentation generators: record r's k-th fetch draws from sha256(stream key, k, r's key).

    Fetch counts are kept per dataset position, so two datasets that differ by one record give every
    other record the same draws; the key of one stream is either public seed material (``public``) or
    fresh secret entropy (``secret``).
    """

    def __init__(self, key: bytes, size: int):
        self.key = hashlib.sha256(b"fedemo-augment\0" + key).digest()  # fixed length: the digest input is unambiguous
        self.fetches = np.zeros(size, dtype=np.int64)

    @classmethod
    def public(cls, seed: int | Sequence[int], size: int) -> "AugmentDraws":
        """Reproducible from the seed (anyone who knows the seed can rebuild every draw)."""
        material = [int(seed)] if np.isscalar(seed) else [int(v) for v in seed]
        return cls(b"public\0" + ",".join(map(str, material)).encode(), size)

    @classmethod
    def secret(cls, size: int, entropy: int | None = None) -> "AugmentDraws":
        """Keyed by 128 fresh bits from the OS CSPRNG (``entropy`` fixes them, for tests that compare streams)."""
        bits = secrets.randbits(128) if entropy is None else int(entropy)
        return cls(b"secret\0" + bits.to_bytes(16, "big"), size)

    def rng(self, position: int, record_key: bytes) -> np.random.Generator:
        k = int(self.fetches[position])
        self.fetches[position] = k + 1
        digest = hashlib.sha256(self.key + k.to_bytes(8, "big") + record_key).digest()
        return np.random.default_rng(int.from_bytes(digest, "big"))


class EmotionSamples(Dataset):
    """A client's samples for one task, with optional train-time augmentation.

    ``seed`` starts a public, reproducible augmentation stream; ``None`` a secret one (DP).
    """

    def __init__(self, data: EmotionData, task: str, *, augment: bool, seed: int | Sequence[int] | None,
                 feature_config: LogMelConfig | None = None):
        self.task = task
        self.augment = augment
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
        self.record_keys = record_keys(data)
        self._feature_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if seed is None:
            self.reseed_secret()
        else:
            self.reseed(seed)

    def __len__(self) -> int:
        return len(self.data)

    def reseed(self, seed: int | Sequence[int]) -> None:
        """New augmentation draws for a new round, reproducible from ``seed`` (public: not for DP)."""
        self.draws = AugmentDraws.public(seed, len(self))

    def reseed_secret(self, entropy: int | None = None) -> None:
        """New augmentation draws from 128 fresh secret bits: nothing the coordinator knows rebuilds them."""
        self.draws = AugmentDraws.secret(len(self), entropy)

    def features(self, i: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel segments and mask of clip i, augmented with ``rng``; clean features of evaluation sets are cached."""
        if rng is not None:
            # augment() ends with peak normalisation then gain, so segments() skips re-normalising.
            return self.wave_augment.segments(self.waves[i], rng, self.feature_config)
        if self.augment:  # a training set: clean features are needed once (moments), not kept
            return clip_segments(self.waves[i], self.feature_config)
        if i not in self._feature_cache:
            self._feature_cache[i] = clip_segments(self.waves[i], self.feature_config)
        return self._feature_cache[i]

    def feature_moments(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-mel-band sums over all clean clips, for the federation's global normalisation."""
        total_sum, total_sq, total_n = 0.0, 0.0, 0
        for i in range(len(self)):
            s, sq, n = feature_moments(*self.features(i))
            total_sum, total_sq, total_n = total_sum + s, total_sq + sq, total_n + n
        return np.asarray(total_sum), np.asarray(total_sq), int(total_n)

    def __getitem__(self, i: int):
        label = torch.tensor(int(self.data.labels[i]), dtype=torch.long)
        va = self.data.valence_arousal[i] if self.data.valence_arousal is not None else _NO_VA
        va = torch.as_tensor(np.asarray(va, dtype=np.float32))
        rng = self.draws.rng(i, self.record_keys[i]) if self.augment else None  # this record's own draws
        if self.task == "face":
            return _face_tensor(self.data.faces[i], rng), label, va
        features, mask = self.features(i, rng)
        if self.task == "voice":
            return features, mask, label, va
        return _face_tensor(self.data.faces[i], rng), features, mask, label, va
