"""Who the synthetic faces are: group and class frequencies, subjects with fixed identities and demographics.

Labels, subjects and demographics depend only on the seed and the population, never on image size or
difficulty, so the FER2013 and RAF-DB writers describe the same people for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared_models.taxonomy import EMOTIONS
from simulations.synthetic.sampling import choice


@dataclass(frozen=True)
class FacePopulation:
    """Group and class frequencies of the synthetic population (unequal, like web data)."""

    sex: dict[str, float] = field(default_factory=lambda: {"male": 0.5, "female": 0.5})
    race: dict[str, float] = field(
        default_factory=lambda: {"caucasian": 0.6, "african_american": 0.15, "asian": 0.25}
    )
    age: dict[str, float] = field(
        default_factory=lambda: {"0-3": 0.02, "4-19": 0.10, "20-39": 0.47, "40-69": 0.35, "70+": 0.06}
    )
    # FER2013-like class frequencies: happy most common, disgust rarest.
    emotions: dict[str, float] = field(
        default_factory=lambda: {
            "angry": 0.13, "disgust": 0.04, "fear": 0.13, "happy": 0.25,
            "sad": 0.16, "surprise": 0.11, "neutral": 0.18,
        }
    )
    images_per_subject: tuple[int, int] = (10, 40)


@dataclass(frozen=True)
class FaceIdentity:
    """Fixed per-subject geometry offsets (face units) and resting expression.

    Gives the images of one subject a shared look, which is what makes a
    per-subject (natural) client split non-IID.
    """

    eye_dx: float = 0.0  # eye spacing offset
    eye_dy: float = 0.0  # eye height offset
    mouth_dy: float = 0.0
    mouth_dw: float = 0.0  # mouth width offset
    brow_dy: float = 0.0
    face_w: float = 0.0  # face width offset
    resting_curve: float = 0.0  # >0: resting smile, <0: resting frown
    resting_brow: float = 0.0  # >0: inner brows rest raised
    skin: float = 0.0  # skin tone offset in units of the group's SkinTone.spread
    hair: float = 40.0  # hair intensity
    hairline: float = -0.62  # hairline height


def sample_demographics(rng: np.random.Generator, population: FacePopulation | None = None) -> dict[str, str]:
    """One person's sex, age band and race, drawn with the population's unequal frequencies."""
    population = population or FacePopulation()
    return {attr: choice(rng, getattr(population, attr)) for attr in ("sex", "age", "race")}


def sample_identity(rng: np.random.Generator, spread: float = 1.0) -> FaceIdentity:
    """A random identity; ``spread`` scales how different subjects look."""
    g = rng.normal(size=8) * spread
    return FaceIdentity(
        eye_dx=0.025 * g[0], eye_dy=0.025 * g[1], mouth_dy=0.03 * g[2], mouth_dw=0.025 * g[3],
        brow_dy=0.025 * g[4], face_w=0.025 * g[5], resting_curve=0.035 * g[6], resting_brow=0.02 * g[7],
        skin=float(np.clip(rng.normal(), -2.5, 2.5)),
        hair=float(rng.uniform(10.0, 200.0)),
        hairline=float(rng.uniform(-0.72, -0.5)),
    )


@dataclass(frozen=True)
class SynthSubject:
    """A synthetic person: an id, fixed demographics, an identity and an image count."""

    subject_id: str
    demographics: dict[str, str]
    identity: FaceIdentity
    n_images: int


def sample_subjects(
    n_images: int, rng: np.random.Generator, population: FacePopulation | None = None, spread: float = 1.0
) -> list[SynthSubject]:
    """Subjects whose image counts (10-40 each, the last one truncated) sum to ``n_images``."""
    population = population or FacePopulation()
    lo, hi = population.images_per_subject
    subjects: list[SynthSubject] = []
    remaining = n_images
    while remaining > 0:
        count = min(remaining, int(rng.integers(lo, hi + 1)))
        demo = sample_demographics(rng, population)
        subjects.append(SynthSubject(f"s{len(subjects):05d}", demo, sample_identity(rng, spread), count))
        remaining -= count
    return subjects


def sample_emotions(n: int, rng: np.random.Generator, population: FacePopulation | None = None) -> np.ndarray:
    """``n`` emotion indices with the population's class frequencies, every class present when n >= 7.

    Counts are allocated by largest remainder (then shuffled) rather than drawn
    independently, so small test datasets still contain the rare classes.
    """
    population = population or FacePopulation()
    probs = np.array([population.emotions[e] for e in EMOTIONS], dtype=float)
    probs /= probs.sum()
    counts = np.floor(probs * n).astype(int)
    if n >= len(EMOTIONS):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(probs * n - np.floor(probs * n)))
    i = 0
    while counts.sum() < n:
        counts[order[i % len(order)]] += 1
        i += 1
    labels = np.repeat(np.arange(len(EMOTIONS)), counts)
    return rng.permutation(labels).astype(np.int64)
