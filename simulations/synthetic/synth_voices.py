"""Deterministic synthetic emotional speech, written in the published CREMA-D and RAVDESS layouts.

Real speech corpora cannot be downloaded on our machines, yet loaders,
feature extraction, partitioning, federated training and fairness reports all
need audio that behaves like them: a learnable but hard task, speakers with
stable voices (so a per-speaker "natural" client split is non-IID), unequal
demographic groups, and groups on which a model does measurably worse.

How a clip is made (source-filter synthesis, vectorised with numpy/scipy)
-------------------------------------------------------------------------
* Timing: the sentence fixes the number of syllables (and their vowels); the
  speaker's rate and the emotion's tempo set syllable durations, with random
  lengthening, stressed syllables and occasional short pauses.
* Source: a Rosenberg glottal pulse (differentiated: glottal flow derivative
  plus lip radiation) driven by an F0 contour = speaker base F0 + emotion
  pitch shift + syllable accents (pitch range) + declination + an
  utterance-final rise/fall + slow drift. Jitter perturbs each glottal period's
  length, shimmer its amplitude; aspiration noise gated by the glottal cycle
  adds breathiness; the open quotient and a high shelf set spectral tilt.
* Consonants: most syllables start with an unvoiced noise burst (fricative
  band 2.5-6 kHz); the nucleus is voiced.
* Filter: four cascaded two-pole formant resonators (F1-F4) per syllable from
  a vowel table, scaled by the speaker's vocal-tract length and nudged by the
  emotion (smiling/tense speech raises formants), filter state carried across
  syllables.
* Room and channel: optional exponential-decay reverb, a per-clip recording
  EQ (shelf + low-pass) and background noise at a fixed level per take, so a
  loud (angry) take has a higher SNR than a quiet (sad) one: the level cue
  that survives the -3 dBFS peak normalisation of the feature pipeline.

What emotion moves (``EMOTION_STYLES``, as reported for acted speech):
pitch level and range (anger/happiness/fear/surprise high and wide, sadness
low and narrow), tempo (fear/anger fast, sadness/disgust slow), energy (anger
loud, sadness quiet), spectral tilt (anger/happiness flatter, sadness
steeper), jitter/shimmer (fear), breathiness (sadness/fear), final contour
(surprise rises, sadness/disgust fall). Each emotion is a vector in a
10-dimensional "cue space" (``CUE_NAMES``); a take's cues are
``cue_strength * level * expressiveness * style + speaker idiosyncrasy + take
noise``, so cues overlap between emotions, speakers and takes.

Speakers and groups (``Population``, ``VoiceDifficulty``)
--------------------------------------------------------
Every speaker has fixed traits: base F0 (male ~120 Hz, female ~210 Hz),
vocal-tract length (formant scale), speaking rate, pitch range, level, tilt,
jitter, shimmer, breathiness, expressiveness and an individual way of acting
each emotion. Age (from 35 to 70) lowers female F0 and raises male F0 a
little, adds jitter/shimmer/breathiness, narrows pitch range and weakens
emotional cues, so older speakers are harder (and, as in CREMA-D, rarer).
The rarest race group (``Population.minority_race``, Asian by default as in
CREMA-D) carries a group-level prosodic offset (``VoiceDifficulty.
minority_shift``: higher, wider, faster, brighter neutral speech). That is a
stand-in for any accent or recording difference correlated with a rare group:
a pooled model learns the majority's neutral baseline and misreads the
minority's, which is the bias the fairness reports should surface.

Calibration (``VoiceDifficulty`` defaults): see ``VoiceDifficulty``.
"""

from __future__ import annotations

import csv
import functools
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal
from scipy.ndimage import uniform_filter1d

from shared_models.taxonomy import CREMAD_CODES, age_band

# ---------------------------------------------------------------------------
# Published format facts
# ---------------------------------------------------------------------------

CREMAD_RATE = 16000
RAVDESS_RATE = 48000
# CREMA-D sentence codes (published order) with their syllable counts.
CREMAD_SENTENCES: dict[str, int] = {
    "IEO": 6,  # It's eleven o'clock
    "TIE": 8,  # That is exactly what happened
    "IOM": 8,  # I'm on my way to the meeting
    "IWW": 8,  # I wonder what this is about
    "TAI": 7,  # The airplane is almost full
    "MTI": 9,  # Maybe tomorrow it will be cold
    "IWL": 8,  # I would like a new alarm clock
    "ITH": 10,  # I think I have a doctor's appointment
    "DFA": 6,  # Don't forget a jacket
    "ITS": 7,  # I think I've seen this before
    "TSI": 5,  # The surface is slick
    "WSI": 9,  # We'll stop in a couple of minutes
}
CREMAD_EMOTIONS: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
CREMAD_LEVELED_SENTENCE = "IEO"  # the one sentence recorded at LO/MD/HI; all others are XX
# RAVDESS emotion codes -> generator style names ("calm" has its own style; loaders fold it into neutral).
RAVDESS_STYLES: dict[str, str] = {
    "01": "neutral", "02": "calm", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}
RAVDESS_SYLLABLES = {"01": 7, "02": 7}  # "Kids are talking by the door" / "Dogs are sitting by the door"

# Design choices: how strongly a recorded intensity level expresses the emotion.
LEVEL_SCALE: dict[str, float] = {"LO": 0.6, "MD": 0.85, "HI": 1.15, "XX": 0.85}
RAVDESS_INTENSITY_SCALE: dict[str, float] = {"01": 0.8, "02": 1.15}

# ---------------------------------------------------------------------------
# Cue space: what emotion (and speaker, and take) moves
# ---------------------------------------------------------------------------

# Log-domain coordinates: additive in each, so styles, idiosyncrasies and noise add.
CUE_NAMES: tuple[str, ...] = (
    "pitch_st",  # mean F0 shift, semitones
    "log_range",  # log multiplier of syllable pitch excursions
    "log_tempo",  # log multiplier of syllable rate
    "energy_db",  # speech level, dB
    "tilt_db",  # high-shelf gain above ~1 kHz, dB (+ = brighter)
    "log_jitter",  # log multiplier of period jitter
    "log_shimmer",  # log multiplier of period amplitude shimmer
    "breath",  # added aspiration-noise level (fraction of source)
    "final_st",  # utterance-final pitch movement, semitones
    "log_formant",  # log multiplier of F1/F2 (smile, jaw opening)
)
# One "unit" of spread per cue, used for speaker idiosyncrasy and take-to-take noise.
CUE_UNITS = np.array([1.0, 0.15, 0.06, 2.0, 1.5, 0.2, 0.2, 0.04, 1.0, 0.02])


def _style(pitch_st=0.0, range_=1.0, tempo=1.0, energy_db=0.0, tilt_db=0.0, jitter=1.0, shimmer=1.0,
           breath=0.0, final_st=0.0, formant=1.0) -> np.ndarray:
    return np.array([pitch_st, math.log(range_), math.log(tempo), energy_db, tilt_db, math.log(jitter),
                     math.log(shimmer), breath, final_st, math.log(formant)])


# Full-strength departures from the speaker's neutral voice (acted-speech literature, simplified).
EMOTION_STYLES: dict[str, np.ndarray] = {
    "neutral": _style(),
    "calm": _style(pitch_st=-0.7, range_=0.8, tempo=0.92, energy_db=-2.0, tilt_db=-1.5, breath=0.04),
    "angry": _style(pitch_st=3.0, range_=1.5, tempo=1.12, energy_db=8.0, tilt_db=5.0, jitter=1.3, shimmer=1.4,
                    breath=-0.03, final_st=-1.0, formant=1.05),
    "happy": _style(pitch_st=3.5, range_=1.7, tempo=1.08, energy_db=4.0, tilt_db=2.5, final_st=0.5, formant=1.06),
    "fear": _style(pitch_st=4.5, range_=0.9, tempo=1.22, energy_db=1.0, tilt_db=1.0, jitter=2.2, shimmer=1.6,
                   breath=0.10, final_st=1.0, formant=1.02),
    "sad": _style(pitch_st=-1.5, range_=0.55, tempo=0.8, energy_db=-6.0, tilt_db=-5.0, jitter=1.3, shimmer=1.2,
                  breath=0.10, final_st=-2.0, formant=0.97),
    "disgust": _style(pitch_st=-1.0, range_=1.2, tempo=0.8, energy_db=2.0, tilt_db=-1.0, jitter=1.6, shimmer=1.4,
                      breath=0.06, final_st=-3.5, formant=0.96),
    "surprise": _style(pitch_st=5.0, range_=2.0, energy_db=4.0, tilt_db=2.0, breath=0.03, final_st=4.0,
                       formant=1.04),
}
# Group-level offset of the minority group's neutral voice (scaled by VoiceDifficulty.minority_shift).
MINORITY_ACCENT = _style(pitch_st=1.5, range_=1.35, tempo=1.08, tilt_db=2.0, final_st=1.0, formant=1.03)

# Vowel formants F1-F4 (Hz, adult male, Peterson & Barney style) and bandwidths.
VOWELS = np.array([
    [730, 1090, 2440, 3400],  # a
    [270, 2290, 3010, 3700],  # i
    [300, 870, 2240, 3400],  # u
    [530, 1840, 2480, 3500],  # e
    [570, 840, 2410, 3400],  # o
    [660, 1720, 2410, 3500],  # ae
    [490, 1350, 1690, 3300],  # er
], dtype=float)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])

CONTROL_RATE = 1000  # Hz: F0 and envelope contours are built at this rate, then interpolated
REF_RMS = 0.015  # voiced-speech RMS of a neutral take at 0 dB level (about -36 dBFS): headroom for anger


# ---------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
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
    """How hard the synthetic speech is.

    Calibration of the defaults (1,500 CREMA-D-layout clips, 91 actors;
    features: per-band mean and std over time of the ``clip_segments``
    log-mels; multinomial logistic regression; 5-fold cross-validation with
    actors held out; 6 classes, chance 17%):

        seed  overall | age 20-39  40-69  70+ | race cauc.  afr.am.  asian | female  male
        0     53.3%   |     55.3   51.4   45.2 |      52.3   57.1     42.0  |  51.3   55.0
        1     52.6%   |     58.7   45.6   33.6 |      54.6   51.7     36.6  |  53.2   52.1

    Generation: 3,000 clips in ~19 s of CPU on one core (~6 ms per clip).
    A small CNN on the globally normalised log-mel segments (one held-out
    fold, 12 epochs, an earlier but statistically equivalent version of
    these defaults) reached 43-48%. Anger/sadness are recognised best,
    neutral and happy worst (neutral is confused with disgust and sadness,
    happy with anger), as in real CREMA-D. Raise ``cue_strength`` (or lower
    the variabilities, raise ``snr_db``) for an easier task.
    """

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
    population: Population = field(default_factory=Population)


# ---------------------------------------------------------------------------
# Speakers
# ---------------------------------------------------------------------------


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


def _allocate(n: int, freqs: dict, rng: np.random.Generator) -> list:
    """``n`` labels with exactly proportional counts (largest remainder), shuffled."""
    keys = list(freqs)
    p = np.array([freqs[k] for k in keys], dtype=float)
    p /= p.sum()
    counts = np.floor(p * n).astype(int)
    order = np.argsort(-(p * n - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    labels = np.repeat(np.arange(len(keys)), counts)
    return [keys[i] for i in rng.permutation(labels)]


def _speaker_traits(actor_id: str, sex: str, age: int, race: str, ethnicity: str,
                    rng: np.random.Generator, d: VoiceDifficulty) -> Speaker:
    """Draw one speaker's fixed voice; age and group effects are applied here."""
    sv = d.speaker_variability
    a = aging_factor(age)
    male = sex == "Male"
    g = rng.standard_normal(10)
    f0 = (120.0 if male else 210.0) * 2.0 ** ((1.8 * sv * g[0] + (1.0 if male else -3.0) * a) / 12.0)
    face_race = _FACE_RACE.get(race) or _choice(rng, {v: d.population.race.get(k, 0.0) for k, v in _FACE_RACE.items()})
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


def _choice(rng: np.random.Generator, freqs: dict[str, float]) -> str:
    keys = list(freqs)
    p = np.array([freqs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def cremad_speakers(n_actors: int, seed: int, difficulty: VoiceDifficulty | None = None) -> list[Speaker]:
    """CREMA-D-like actors 1001.. with exact group proportions; deterministic from ``seed``."""
    d = difficulty or VoiceDifficulty()
    pop = d.population
    rng = np.random.default_rng([seed, 11])
    n_male = int(round(pop.male_fraction * n_actors))
    sexes = list(rng.permutation(["Male"] * n_male + ["Female"] * (n_actors - n_male)))
    races = _allocate(n_actors, pop.race, rng)
    ranges = _allocate(n_actors, pop.age_ranges, rng)
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
        race = _choice(srng, d.population.race)
        sex = "Male" if i % 2 else "Female"
        speakers.append(_speaker_traits(f"{i:02d}", sex, int(srng.integers(21, 34)), race, "Not Hispanic", srng, d))
    return speakers


# ---------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Take:
    """Everything that defines one clip besides its random draws."""

    style: str  # key of EMOTION_STYLES
    level: float  # intensity scale of the emotion
    n_syllables: int
    vowels: tuple[int, ...]  # row of VOWELS per syllable (fixed by the sentence text)


def sentence_vowels(code: str, n_syllables: int) -> tuple[int, ...]:
    """A fixed vowel sequence per sentence, so every actor says 'the same words'."""
    rng = np.random.default_rng(zlib.crc32(code.encode()))
    return tuple(int(v) for v in rng.integers(0, len(VOWELS), n_syllables))


def _take_cues(sp: Speaker, take: Take, rng: np.random.Generator, d: VoiceDifficulty) -> np.ndarray:
    strength = d.cue_strength * take.level * sp.expressiveness
    noise = rng.standard_normal(len(CUE_NAMES)) * CUE_UNITS * d.take_variability
    return strength * EMOTION_STYLES[take.style] + sp.idiosyncrasy[take.style] + sp.offset + noise


def _smooth(x: np.ndarray, width: float) -> np.ndarray:
    """Two passes of a centred moving average (a triangular kernel ~2*width wide), O(n)."""
    width = max(1, int(width))
    return uniform_filter1d(uniform_filter1d(np.asarray(x, dtype=float), width, mode="nearest"), width, mode="nearest")


def _shelf_sos(gain_db: float, corner_hz: float, sr: int) -> np.ndarray:
    """One SOS row for x + g * (x - lowpass(x)): boosts (or cuts) everything above ``corner_hz``.

    With a one-pole low-pass (1 - a) / (1 - a z^-1) this is
    ((1 + g a) - a (1 + g) z^-1) / (1 - a z^-1), g = 10^(gain_db / 20) - 1:
    unity at DC, 1 + g well above the corner. As an SOS row it joins the
    formant or channel cascade instead of costing a filter pass of its own.
    """
    a = math.exp(-2.0 * math.pi * corner_hz / sr)
    g = 10.0 ** (gain_db / 20.0) - 1.0
    return np.array([[1.0 + g * a, -a * (1.0 + g), 0.0, 1.0, -a, 0.0]])


@functools.lru_cache(maxsize=64)
def _butter(kind: str, cutoff: tuple[float, ...] | float, sr: int, order: int) -> np.ndarray:
    return signal.butter(order, cutoff, btype=kind, fs=sr, output="sos")


def _formant_sos(formants: np.ndarray, sr: int) -> np.ndarray:
    """Cascade of two-pole resonators with unity DC gain (Klatt), one SOS row per formant."""
    f = np.minimum(formants, 0.45 * sr)
    r = np.exp(-math.pi * FORMANT_BANDWIDTHS / sr)
    c1 = -2.0 * r * np.cos(2.0 * math.pi * f / sr)
    c2 = r * r
    sos = np.zeros((len(f), 6))
    sos[:, 0] = 1.0 + c1 + c2
    sos[:, 3] = 1.0
    sos[:, 4] = c1
    sos[:, 5] = c2
    return sos


@dataclass
class _Timing:
    starts: np.ndarray  # syllable start times, s
    durs: np.ndarray  # syllable durations, s
    stress: np.ndarray  # bool per syllable
    total: float  # clip length, s


def _timing(n_syl: int, rate: float, rng: np.random.Generator, d: VoiceDifficulty) -> _Timing:
    """Syllable onsets/durations with lengthening, stress and pauses, fitted to the duration range."""
    stress = rng.random(n_syl) < 0.35
    stress[rng.integers(n_syl)] = True
    durs = np.exp(rng.normal(0.0, 0.25, n_syl)) / rate * np.where(stress, 1.3, 1.0)
    durs[-1] *= 1.3  # phrase-final lengthening
    gaps = np.where(rng.random(n_syl) < 0.12, rng.uniform(0.05, 0.2, n_syl), 0.0)
    gaps[-1] = 0.0
    lead, trail = rng.uniform(0.15, 0.45, 2)
    speech = float(durs.sum() + gaps.sum())
    lo, hi = d.duration_s
    total = lead + speech + trail
    if total > hi:  # compress everything to fit the maximum clip length
        k = hi / total
        durs, gaps, lead, total = durs * k, gaps * k, lead * k, hi
    total = max(total, lo)
    starts = lead + np.concatenate([[0.0], np.cumsum(durs + gaps)[:-1]])
    return _Timing(starts=starts, durs=durs, stress=stress, total=total)


def _f0_contour(tc: np.ndarray, tm: _Timing, f0: float, range_st: float, final_st: float,
                rng: np.random.Generator) -> np.ndarray:
    """F0 in Hz on the control grid: accents at syllable centres, declination, final movement, drift."""
    n_syl = len(tm.starts)
    centres = tm.starts + tm.durs / 2
    accents = (rng.standard_normal(n_syl) + 0.8 * tm.stress) * range_st
    st = np.interp(tc, centres, accents)
    speech_end = tm.starts[-1] + tm.durs[-1]
    st -= 1.5 * (tc - tm.starts[0]) / max(speech_end - tm.starts[0], 1e-3)  # declination
    st += final_st * np.clip((tc - tm.starts[-1]) / tm.durs[-1], 0.0, 1.0)
    st = _smooth(st, 0.05 * CONTROL_RATE)
    drift_w = 0.1 * CONTROL_RATE
    st += 0.3 * _smooth(rng.standard_normal(len(tc)), drift_w) * math.sqrt(1.5 * drift_w)  # ~0.3 st std
    return f0 * 2.0 ** (st / 12.0)


def _envelopes(tc: np.ndarray, tm: _Timing, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Voicing amplitude and frication gate on the control grid.

    Most syllables open with an unvoiced consonant (15-35% of the syllable),
    the rest of the syllable is a voiced nucleus with a rise-fall envelope;
    stressed syllables are 4 dB louder.
    """
    n_syl = len(tm.starts)
    idx = np.clip(np.searchsorted(tm.starts, tc, side="right") - 1, 0, None)
    u = (tc - tm.starts[idx]) / tm.durs[idx]
    in_syl = (tc >= tm.starts[0]) & (u < 1.0)
    onset = np.where(rng.random(n_syl) < 0.3, 0.0, rng.uniform(0.15, 0.35, n_syl))
    voiced = in_syl & (u >= onset[idx])
    v = np.clip((u - onset[idx]) / (1.0 - onset[idx]), 0.0, 1.0)
    gain = 10.0 ** ((np.where(tm.stress, 4.0, 0.0) + rng.normal(0.0, 1.5, n_syl)) / 20.0)
    voicing = _smooth(voiced * np.sqrt(np.sin(math.pi * v)) * gain[idx], 0.01 * CONTROL_RATE)
    frication = _smooth((in_syl & ~voiced) * 1.0, 0.005 * CONTROL_RATE)
    return voicing, frication


def _glottal_source(f0: np.ndarray, jitter: float, shimmer: float, open_q: float, breath: float,
                    white: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Differentiated Rosenberg pulses with per-period jitter and shimmer, plus gated aspiration noise."""
    nominal = np.cumsum(f0 / sr)
    jit = np.exp(jitter * rng.standard_normal(int(nominal[-1]) + 2))
    phase = np.cumsum(f0 * jit[nominal.astype(np.int64)] / sr)
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    tp = 0.6 * open_q
    opening = frac < tp
    c = np.cos(np.where(opening, (math.pi / tp) * frac, (0.5 * math.pi / (open_q - tp)) * (frac - tp)))
    flow = np.where(opening, 0.5 * (1.0 - c), np.where(frac < open_q, c, 0.0))
    amp = np.exp(shimmer * rng.standard_normal(int(cycle[-1]) + 1))
    src = np.diff(flow, prepend=flow[0]) * amp[cycle]
    src *= 1.0 / (np.sqrt(np.mean(src**2)) + 1e-12)
    return src + (3.0 * breath) * white * np.where(frac < open_q, 1.0, 0.3)


def _vocal_tract(source: np.ndarray, tilt_db: float, tm: _Timing, take: Take, scale: np.ndarray,
                 rng: np.random.Generator, sr: int) -> np.ndarray:
    """Spectral-tilt shelf then per-syllable formant cascade; filter state is carried across syllables."""
    out = np.empty_like(source)
    bounds = np.append(np.minimum((tm.starts[1:] * sr).astype(np.int64), len(source)), len(source))
    tilt = _shelf_sos(tilt_db, 1000.0, sr)
    zi = np.zeros((1 + len(FORMANT_BANDWIDTHS), 2))
    lo = 0
    for s, hi in enumerate(bounds):
        formants = VOWELS[take.vowels[s]] * scale * np.exp(rng.normal(0.0, 0.03, 4))
        out[lo:hi], zi = signal.sosfilt(np.vstack([tilt, _formant_sos(formants, sr)]), source[lo:hi], zi=zi)
        lo = hi
    return out


def synthesize_take(sp: Speaker, take: Take, rng: np.random.Generator, sr: int,
               d: VoiceDifficulty | None = None) -> np.ndarray:
    """One take of ``sp`` acting ``take`` as float32 samples at ``sr`` (room and channel included).

    Contours (F0, envelopes) are built on a 1 kHz control grid and
    interpolated, so per-sample work is a handful of vectorised passes.
    """
    d = d or VoiceDifficulty()
    cue = dict(zip(CUE_NAMES, _take_cues(sp, take, rng, d)))
    tm = _timing(take.n_syllables, sp.rate_syl_s * math.exp(cue["log_tempo"]), rng, d)
    n = int(round(tm.total * sr))
    tc = np.arange(int(tm.total * CONTROL_RATE) + 2) / CONTROL_RATE
    voicing, frication = _envelopes(tc, tm, rng)
    f0_c = _f0_contour(tc, tm, sp.f0_hz * 2.0 ** (cue["pitch_st"] / 12.0),
                       sp.range_st * math.exp(cue["log_range"]), cue["final_st"], rng)
    t = np.arange(n) / sr
    env = np.interp(t, tc, voicing)
    white = rng.standard_normal(n)  # shared by aspiration and frication (never loud at the same time)

    tilt = sp.tilt_db + cue["tilt_db"]
    source = _glottal_source(
        np.interp(t, tc, f0_c), sp.jitter * math.exp(cue["log_jitter"]), sp.shimmer * math.exp(cue["log_shimmer"]),
        open_q=float(np.clip(0.6 - 0.015 * tilt, 0.4, 0.8)),
        breath=float(np.clip(sp.breath + cue["breath"], 0.0, 0.6)), white=white, rng=rng, sr=sr)
    formant_shift = math.exp(cue["log_formant"])
    scale = sp.formant_scale * np.array([formant_shift**1.5, formant_shift, 1.0, 1.0])
    speech = _vocal_tract(source * env, tilt, tm, take, scale, rng, sr)

    loud = env > 0.3 * env.max()
    speech_rms = math.sqrt(np.mean(speech[loud] ** 2)) + 1e-12
    fric = signal.sosfilt(_butter("bandpass", (2500.0, min(6000.0, 0.45 * sr)), sr, 2), white)
    speech += (0.5 * speech_rms / (np.std(fric) + 1e-12)) * fric * np.interp(t, tc, frication)
    speech *= REF_RMS * 10.0 ** ((sp.level_db + cue["energy_db"]) / 20.0) / speech_rms
    return _room_and_channel(speech, rng, sr, d).astype(np.float32)


def _room_and_channel(speech: np.ndarray, rng: np.random.Generator, sr: int, d: VoiceDifficulty) -> np.ndarray:
    """Reverb (sometimes), recording EQ, band limit and background noise at a fixed per-take level."""
    n = len(speech)
    draws = rng.random(2)
    rt60 = rng.uniform(*d.rt60_s)
    if draws[0] < d.reverb_prob:
        length = int(min(rt60, 0.5) * sr)
        ir = rng.standard_normal(length) * np.exp(-6.9 * np.arange(length) / (rt60 * sr))
        wet = signal.oaconvolve(speech, ir)[:n]
        drr = 10.0 ** (-rng.uniform(3.0, 12.0) / 20.0)  # direct-to-reverberant ratio 3-12 dB
        speech = speech + drr * wet * np.std(speech) / (np.std(wet) + 1e-12)
    eq = _shelf_sos(rng.normal(0.0, d.channel_tilt_db), 1500.0, sr)
    cutoff = min(100.0 * round(rng.uniform(*d.channel_lowpass_hz) / 100.0), 0.45 * sr)  # 100 Hz steps: cached
    out = signal.sosfilt(np.vstack([eq, _butter("lowpass", cutoff, sr, 4)]), speech)
    white = rng.standard_normal(n)
    noise = signal.lfilter([1.0], [1.0, -0.9], white) + 1.15 * white  # reddish room noise with a white floor
    noise *= REF_RMS * 10.0 ** (-rng.uniform(*d.snr_db) / 20.0) / np.std(noise)
    return np.clip(out + noise, -1.0, 1.0)


def _write_wav(path: Path, wave: np.ndarray, sr: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype="PCM_16")


# ---------------------------------------------------------------------------
# CREMA-D
# ---------------------------------------------------------------------------

def cremad_takes_per_actor() -> list[tuple[str, str, str]]:
    """(sentence, emotion, level) of one actor's session as published: 82 takes.

    IEO is recorded at LO/MD/HI for the five emotions (neutral only XX); the
    other eleven sentences once each at XX.
    """
    takes = []
    for sent in CREMAD_SENTENCES:
        for emo in CREMAD_EMOTIONS:
            if sent == CREMAD_LEVELED_SENTENCE and emo != "NEU":
                takes += [(sent, emo, lvl) for lvl in ("LO", "MD", "HI")]
            else:
                takes.append((sent, emo, "XX"))
    return takes


def _cremad_selection(n_clips: int, n_actors: int, seed: int) -> list[tuple[int, str, str, str]]:
    """``n_clips`` (actor index, sentence, emotion, level), spread evenly over actors, no repeats."""
    grid = cremad_takes_per_actor()
    if n_clips > n_actors * len(grid):
        raise ValueError(f"CREMA-D has at most {len(grid)} takes per actor: {n_clips} clips need "
                         f"n_actors >= {-(-n_clips // len(grid))}, got {n_actors}")
    rng = np.random.default_rng([seed, 13])
    orders = [rng.permutation(len(grid)) for _ in range(n_actors)]
    picks = [(a, *grid[orders[a][k]]) for k in range(len(grid)) for a in range(n_actors)]  # round-robin
    return sorted(picks[:n_clips], key=lambda p: (p[0], p[1], p[2], p[3]))


def _write_demographics(path: Path, speakers: list[Speaker]) -> None:
    with open(path, "w", newline="") as fh:
        fh.write('"ActorID","Age","Sex","Race","Ethnicity"\n')
        writer = csv.writer(fh, lineterminator="\n")
        for sp in speakers:
            writer.writerow([sp.actor_id, sp.age, sp.sex, sp.race, sp.ethnicity])


def write_cremad(out_dir: Path, n_clips: int, seed: int, n_actors: int = 91,
                 difficulty: VoiceDifficulty | None = None, with_faces: bool = False) -> Path:
    """Write a CREMA-D-layout corpus: ``AudioWAV/*.wav`` (16 kHz, 16-bit) and ``VideoDemographics.csv``.

    With ``with_faces`` also ``FaceFrames/<clip stem>.png``: one 48x48
    grayscale frame per clip showing the same emotion, drawn by
    ``simulations.synthetic.synth_faces.render_face`` with the actor's demographics and
    one face identity per actor. Speakers depend on (seed, n_actors) and each
    clip only on its speaker and (seed, sentence, emotion, level), so corpora
    that differ only in ``n_clips`` share their clips byte for byte.
    """
    d = difficulty or VoiceDifficulty()
    out_dir = Path(out_dir)
    speakers = cremad_speakers(n_actors, seed, d)
    (out_dir / "AudioWAV").mkdir(parents=True, exist_ok=True)
    _write_demographics(out_dir / "VideoDemographics.csv", speakers)
    face = _FaceWriter(out_dir / "FaceFrames", speakers, seed) if with_faces else None
    for a, sent, emo, lvl in _cremad_selection(n_clips, n_actors, seed):
        sp = speakers[a]
        stem = f"{sp.actor_id}_{sent}_{emo}_{lvl}"
        key = [seed, 14, a, list(CREMAD_SENTENCES).index(sent), CREMAD_EMOTIONS.index(emo),
               list(LEVEL_SCALE).index(lvl)]
        take = Take(CREMAD_CODES[emo], LEVEL_SCALE[lvl], CREMAD_SENTENCES[sent],
                    sentence_vowels(sent, CREMAD_SENTENCES[sent]))
        wave = synthesize_take(sp, take, np.random.default_rng(key), CREMAD_RATE, d)
        _write_wav(out_dir / "AudioWAV" / f"{stem}.wav", wave, CREMAD_RATE)
        if face is not None:
            face.write(stem, a, CREMAD_CODES[emo], key)
    return out_dir


class _FaceWriter:
    """Draws the video frame paired with each clip (one face identity per actor)."""

    def __init__(self, folder: Path, speakers: list[Speaker], seed: int):
        from simulations.synthetic.synth_faces import render_face  # written alongside; imported only when faces are asked for

        self.render = render_face
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.demographics = [
            {"sex": sp.sex.lower(), "age": age_band(sp.age), "race": sp.face_race} for sp in speakers
        ]
        self.identities = [self._identity(seed, i) for i in range(len(speakers))]

    @staticmethod
    def _identity(seed: int, actor: int):
        """A fixed face per actor where synth_faces offers identities; otherwise render_face draws one per frame."""
        try:
            from simulations.synthetic.synth_faces import sample_identity
        except ImportError:
            return None
        return sample_identity(np.random.default_rng([seed, 15, actor]))

    def write(self, stem: str, actor: int, emotion: str, key: list[int]) -> None:
        from PIL import Image

        rng = np.random.default_rng([*key, 16])
        kwargs = {} if self.identities[actor] is None else {"identity": self.identities[actor]}
        img = np.asarray(self.render(emotion, dict(self.demographics[actor]), rng, size=48, **kwargs), dtype=np.uint8)
        Image.fromarray(img).save(self.folder / f"{stem}.png")


# ---------------------------------------------------------------------------
# RAVDESS
# ---------------------------------------------------------------------------


def ravdess_takes_per_actor() -> list[tuple[str, str, str, str]]:
    """(emotion, intensity, statement, repetition) codes of one actor's speech session: 60 as published."""
    takes = []
    for emo in RAVDESS_STYLES:
        for inten in ("01",) if emo == "01" else ("01", "02"):
            takes += [(emo, inten, st, rp) for st in ("01", "02") for rp in ("01", "02")]
    return takes


def write_ravdess(out_dir: Path, n_actors: int = 24, seed: int = 0, clips_per_actor: int = 60,
                  difficulty: VoiceDifficulty | None = None) -> Path:
    """Write a RAVDESS-layout speech corpus: ``Actor_XX/03-01-EM-IN-ST-RP-XX.wav`` at 48 kHz, 16-bit.

    ``clips_per_actor`` < 60 takes a seeded subset of each actor's session
    (different per actor); more than 60 is an error (the design has 60).
    """
    d = difficulty or VoiceDifficulty()
    grid = ravdess_takes_per_actor()
    if not 1 <= clips_per_actor <= len(grid):
        raise ValueError(f"RAVDESS has {len(grid)} speech takes per actor; clips_per_actor={clips_per_actor}")
    out_dir = Path(out_dir)
    for sp in ravdess_speakers(n_actors, seed, d):
        actor = int(sp.actor_id)
        chosen = np.sort(np.random.default_rng([seed, 22, actor]).permutation(len(grid))[:clips_per_actor])
        for k in chosen:
            emo, inten, st, rp = grid[k]
            take = Take(RAVDESS_STYLES[emo], RAVDESS_INTENSITY_SCALE[inten], RAVDESS_SYLLABLES[st],
                        sentence_vowels(f"RAVDESS{st}", RAVDESS_SYLLABLES[st]))
            wave = synthesize_take(sp, take, np.random.default_rng([seed, 23, actor, int(k)]), RAVDESS_RATE, d)
            _write_wav(out_dir / f"Actor_{sp.actor_id}" / f"03-01-{emo}-{inten}-{st}-{rp}-{sp.actor_id}.wav",
                       wave, RAVDESS_RATE)
    return out_dir
