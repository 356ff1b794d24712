"""A whole synthetic face dataset: subjects, labels, split, pixels and landmarks (``generate_faces``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulations.synthetic.faces.params import FaceDifficulty, _Batch, _FaceParams, _sample_params, _take
from simulations.synthetic.faces.population import (FacePopulation, SynthSubject, sample_emotions,
                                                    sample_subjects)
from simulations.synthetic.faces.render import _render_batch


@dataclass
class SynthFaceSet:
    """A generated face dataset with everything the generator knows about each row."""

    faces: np.ndarray  # uint8 (N, size, size)
    labels: np.ndarray  # int64 indices into taxonomy.EMOTIONS
    subjects: np.ndarray  # object array of subject ids
    demographics: dict[str, np.ndarray]  # "sex", "age", "race" -> object arrays
    split: np.ndarray  # object array, "train" or "test"
    landmarks: np.ndarray | None = None  # float32 (N, 5, 2) pixel (x, y): eyes, nose tip, mouth corners

    def __len__(self) -> int:
        return len(self.labels)


def generate_faces(
    n: int,
    seed: int,
    size: int = 48,
    difficulty: FaceDifficulty | None = None,
    test_fraction: float = 0.2,
    population: FacePopulation | None = None,
) -> SynthFaceSet:
    """``n`` faces from ~n/25 subjects, rows shuffled, with a random train/test split.

    Labels, subjects, demographics and split depend only on ``seed``,
    ``test_fraction`` and ``population`` (not on ``size`` or ``difficulty``),
    so the FER2013 and RAF-DB writers describe the same population when given
    the same seed. ``landmarks`` (eyes, nose tip, mouth corners, pixel
    coordinates) follow each face's pose.
    """
    difficulty = difficulty or FaceDifficulty()
    data, subjects, owner = _generate_meta(n, seed, test_fraction, population, difficulty.identity_spread)
    batch = _Batch(data.labels, data.demographics["sex"], data.demographics["age"], data.demographics["race"],
                   [subjects[i].identity for i in owner])
    params = _sample_params(batch, np.random.default_rng([seed, 1]), difficulty, size)
    pixel_rng = np.random.default_rng([seed, 2])
    data.faces = np.empty((n, size, size), dtype=np.uint8)
    chunk = max(8, _CHUNK_PIXELS // (size * size))  # keeps the float32 work arrays cache-sized
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        data.faces[rows] = _render_batch(_take(params, rows), size, pixel_rng)
    data.landmarks = _landmarks(params, size)
    return data


_CHUNK_PIXELS = 300_000


def _generate_meta(
    n: int, seed: int, test_fraction: float, population: FacePopulation | None, spread: float
) -> tuple[SynthFaceSet, list[SynthSubject], np.ndarray]:
    """Everything about a generated set except pixels (cheap: no rendering)."""
    population = population or FacePopulation()
    rng = np.random.default_rng([seed, 0])
    subjects = sample_subjects(n, rng, population, spread)
    owner = rng.permutation(np.repeat(np.arange(len(subjects)), [s.n_images for s in subjects]))
    labels = sample_emotions(n, rng, population)
    split = np.where(rng.random(n) < test_fraction, "test", "train").astype(object)
    demo = {a: np.array([subjects[i].demographics[a] for i in owner], dtype=object) for a in ("sex", "age", "race")}
    subject_ids = np.array([subjects[i].subject_id for i in owner], dtype=object)
    empty = np.empty((n, 0, 0), dtype=np.uint8)
    return SynthFaceSet(empty, labels, subject_ids, demo, split), subjects, owner


def _landmarks(p: _FaceParams, size: int) -> np.ndarray:
    """Eye centres, nose tip and mouth corners in pixel coordinates, (B, 5, 2)."""
    mw = np.maximum(p.mouth_w + p.width, 0.1)
    corner_y = p.mouth_y - p.curve
    u = np.stack([-p.eye_x, p.eye_x, np.zeros_like(p.eye_x), -mw, mw], axis=1)
    v = np.stack([p.eye_y, p.eye_y, np.full_like(p.eye_y, 0.22), corner_y, corner_y], axis=1)
    c, s, sc = np.cos(p.angle)[:, None], np.sin(p.angle)[:, None], p.scale[:, None]
    x = p.tx[:, None] + sc * (c * u - s * v)
    y = p.ty[:, None] + sc * (s * u + c * v)
    return np.stack([(x + 1.0) * size / 2.0, (y + 1.0) * size / 2.0], axis=-1).astype(np.float32)
