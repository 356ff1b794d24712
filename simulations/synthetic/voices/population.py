"""Who the synthetic actors are: group frequencies, difficulty knobs, and each speaker's fixed voice.

Age and the rare group's prosodic offset are applied to a speaker's traits here, so older and minority
speakers are harder for a pooled model, which is the bias the fairness reports should surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from simulations.synthetic.sampling import allocate, choice
from simulations.synthetic.voices.cues import CUE_NAMES, CUE_UNITS, EMOTION_STYLES, MINORITY_ACCENT


@dataclass(frozen=True)
class VoicePopulation:
    """Who the synthetic actors are. Defaults follow CREMA-D (48/91 male, ages 20-74, mostly Caucasian).

    Counts are allocated exactly (largest remainder) and then shuffled, so a
    91-actor corpus always has the same group sizes whatever the seed.
    """

    male_fraction: float = 48 / 91
    race: dict[str, float] = field(default_factory=lambda: {
        "Caucasian": 0.62, "African American": 0.23, "Asian": 0.09, "Unknown": 0.06,
    })
    """CSV race names and their frequencies."""
    minority_race: str = "Asian"
    """The rare group that carries ``MINORITY_ACCENT``."""
    age_ranges: dict[tuple[int, int], float] = field(default_factory=lambda: {
        (20, 39): 0.60, (40, 69): 0.32, (70, 74): 0.08,
    })
    """Inclusive age ranges (years) and their frequencies; ages are uniform inside a range."""
    hispanic_fraction: float = 0.1


@dataclass(frozen=True)
class VoiceDifficulty:
    """How hard the synthetic speech is. Defaults are calibrated (docs/synthetic_data.md); raise ``cue_strength``
    (or lower the variabilities, raise ``snr_db``) for an easier task."""

    cue_strength: float = 1.6
    """Scales every emotion's departure from the speaker's neutral voice (``EMOTION_STYLES`` at 1.0).

    Above 1 by default: a synthetic take carries no words, rhythm or voice
    quality beyond the modelled cues, so they are exaggerated to keep the task
    as learnable as real acted speech."""
    speaker_variability: float = 1.0
    """Spread of speakers' fixed traits and of their individual way of acting each emotion."""
    idiosyncrasy: float = 0.8
    """Per-speaker, per-emotion cue offsets, in ``CUE_UNITS`` (times speaker_variability)."""
    take_variability: float = 0.8
    """Take-to-take cue noise within a speaker, in ``CUE_UNITS``."""
    snr_db: tuple[float, float] = (12.0, 30.0)
    """Background-noise SNR of a neutral-level take; louder/quieter takes shift it by their level."""
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.5)
    """Reverb time of the rooms used when a take is reverberant."""
    channel_tilt_db: float = 3.0
    """Std of a per-take recording EQ (high shelf at 1.5 kHz)."""
    channel_lowpass_hz: tuple[float, float] = (4500.0, 7800.0)
    """Per-take low-pass cutoff (microphone / codec band limit), capped below Nyquist."""
    duration_s: tuple[float, float] = (1.5, 3.5)
    """Clip length range; takes are time-compressed or padded with silence to fit."""
    older_jitter: float = 1.5
    """Extra jitter (x(1 + this)) at age 70 (linear from 35); shimmer gets 70% of it."""
    older_range_loss: float = 0.45
    """Fraction of pitch range lost at age 70."""
    older_cue_loss: float = 0.45
    """Fraction of emotional cue strength lost at age 70."""
    minority_shift: float = 1.5
    """Strength of the minority group's prosodic offset (``MINORITY_ACCENT``)."""
    population: VoicePopulation = field(default_factory=VoicePopulation)


@dataclass
class Speaker:
    """A synthetic actor: demographics plus the fixed traits of their voice."""

    actor_id: str
    sex: str  # "Male" / "Female" (CSV spelling)
    age: int
    race: str  # CSV spelling
    ethnicity: str  # "Hispanic" / "Not Hispanic"
    face_race: str  # taxonomy race drawn on the face (an "Unknown" race still has a face)
    f0_hz: float
    formant_scale: float
    rate_syl_s: float
    range_st: float
    level_db: float
    tilt_db: float
    jitter: float
    shimmer: float
    breath: float
    expressiveness: float
    offset: np.ndarray  # fixed cue offset on every take (minority accent)
    idiosyncrasy: dict[str, np.ndarray]  # style name -> cue offsets

    @property
    def aging(self) -> float:
        return aging_factor(self.age)


def aging_factor(age: float) -> float:
    """0 up to 35 years, 1 at 70 and over: how much age-related voice change applies."""
    return float(np.clip((age - 35) / 35.0, 0.0, 1.0))


_FACE_RACE = {"Caucasian": "caucasian", "African American": "african_american", "Asian": "asian"}


def _speaker_traits(actor_id: str, sex: str, age: int, race: str, ethnicity: str,
                    rng: np.random.Generator, d: VoiceDifficulty) -> Speaker:
    """Draw one speaker's fixed voice; age and group effects are applied here."""
    sv = d.speaker_variability
    a = aging_factor(age)
    male = sex == "Male"
    g = rng.standard_normal(10)
    f0 = (120.0 if male else 210.0) * 2.0 ** ((1.8 * sv * g[0] + (1.0 if male else -3.0) * a) / 12.0)
    face_race = _FACE_RACE.get(race) or choice(rng, {v: d.population.race.get(k, 0.0) for k, v in _FACE_RACE.items()})
    offset = MINORITY_ACCENT * d.minority_shift if race == d.population.minority_race else np.zeros(len(CUE_NAMES))
    idio = {name: rng.standard_normal(len(CUE_NAMES)) * CUE_UNITS * d.idiosyncrasy * sv for name in EMOTION_STYLES}
    return Speaker(
        actor_id=actor_id, sex=sex, age=age, race=race, ethnicity=ethnicity, face_race=face_race,
        f0_hz=f0,
        formant_scale=(1.0 if male else 1.15) * math.exp(0.04 * sv * g[1]),
        rate_syl_s=4.6 * math.exp(0.12 * sv * g[2]),
        range_st=2.0 * math.exp(0.2 * sv * g[3]) * (1.0 - d.older_range_loss * a),
        level_db=2.0 * sv * g[4],
        tilt_db=2.0 * sv * g[5],
        jitter=0.008 * math.exp(0.3 * sv * g[6]) * (1.0 + d.older_jitter * a),
        shimmer=0.05 * math.exp(0.3 * sv * g[7]) * (1.0 + 0.7 * d.older_jitter * a),
        breath=0.06 + 0.04 * abs(g[8]) + (0.0 if male else 0.03) + 0.08 * a,
        expressiveness=math.exp(0.25 * sv * g[9]) * (1.0 - d.older_cue_loss * a),
        offset=offset,
        idiosyncrasy=idio,
    )


def cremad_speakers(n_actors: int, seed: int, difficulty: VoiceDifficulty | None = None) -> list[Speaker]:
    """CREMA-D-like actors 1001.. with exact group proportions; deterministic from ``seed``."""
    d = difficulty or VoiceDifficulty()
    pop = d.population
    rng = np.random.default_rng([seed, 11])
    n_male = int(round(pop.male_fraction * n_actors))
    sexes = list(rng.permutation(["Male"] * n_male + ["Female"] * (n_actors - n_male)))
    races = allocate(n_actors, pop.race, rng)
    ranges = allocate(n_actors, pop.age_ranges, rng)
    speakers = []
    for i in range(n_actors):
        srng = np.random.default_rng([seed, 12, i])
        lo, hi = ranges[i]
        age = int(srng.integers(lo, hi + 1))
        eth = "Hispanic" if srng.random() < pop.hispanic_fraction else "Not Hispanic"
        speakers.append(_speaker_traits(str(1001 + i), sexes[i], age, races[i], eth, srng, d))
    return speakers


def ravdess_speakers(n_actors: int, seed: int, difficulty: VoiceDifficulty | None = None) -> list[Speaker]:
    """RAVDESS-like actors 01..: odd male, even female, young adults (21-33, as published)."""
    d = difficulty or VoiceDifficulty()
    speakers = []
    for i in range(1, n_actors + 1):
        srng = np.random.default_rng([seed, 21, i])
        race = choice(srng, d.population.race)
        sex = "Male" if i % 2 else "Female"
        speakers.append(_speaker_traits(f"{i:02d}", sex, int(srng.integers(21, 34)), race, "Not Hispanic", srng, d))
    return speakers
