"""The cue space of synthetic emotional speech: what emotion (and speaker, and take) moves.

Each emotion is a vector of log-domain cues (pitch, range, tempo, energy, tilt, jitter, shimmer, breath,
final contour, formants), as reported for acted speech, simplified; styles, idiosyncrasies and noise add.
"""

from __future__ import annotations

import math

import numpy as np

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
