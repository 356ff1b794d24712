"""Deterministic synthetic emotional speech, written in the published CREMA-D and RAVDESS layouts.

Real speech corpora cannot be downloaded on our machines, yet loaders, features, partitioning, training and
fairness reports need audio that behaves like them: a learnable but hard task, speakers with stable voices,
unequal groups, and groups a model serves worse. The parts live in ``voices/``: cues (what emotion moves),
population (speakers), synthesis (one take, source-filter), writers (layouts). How a clip is made and how
the defaults were calibrated: docs/synthetic_data.md.
"""

from __future__ import annotations

from simulations.synthetic.voices.cues import CUE_NAMES, CUE_UNITS, EMOTION_STYLES, MINORITY_ACCENT
from simulations.synthetic.voices.population import (Speaker, VoiceDifficulty, VoicePopulation, aging_factor,
                                                     cremad_speakers, ravdess_speakers)
from simulations.synthetic.voices.synthesis import (CONTROL_RATE, FORMANT_BANDWIDTHS, REF_RMS, VOWELS, Take,
                                                    sentence_vowels, synthesize_take)
from simulations.synthetic.voices.writers import (CREMAD_EMOTIONS, CREMAD_LEVELED_SENTENCE, CREMAD_RATE,
                                                  CREMAD_SENTENCES, LEVEL_SCALE, RAVDESS_INTENSITY_SCALE,
                                                  RAVDESS_RATE, RAVDESS_STYLES, RAVDESS_SYLLABLES,
                                                  cremad_takes_per_actor, ravdess_takes_per_actor, write_cremad,
                                                  write_ravdess)

Population = VoicePopulation  # the name callers used before the split

__all__ = ["CONTROL_RATE", "CREMAD_EMOTIONS", "CREMAD_LEVELED_SENTENCE", "CREMAD_RATE", "CREMAD_SENTENCES",
           "CUE_NAMES", "CUE_UNITS", "EMOTION_STYLES", "FORMANT_BANDWIDTHS", "LEVEL_SCALE", "MINORITY_ACCENT",
           "Population", "RAVDESS_INTENSITY_SCALE", "RAVDESS_RATE", "RAVDESS_STYLES", "RAVDESS_SYLLABLES",
           "REF_RMS", "Speaker", "Take", "VOWELS", "VoiceDifficulty", "VoicePopulation", "aging_factor",
           "cremad_speakers", "cremad_takes_per_actor", "ravdess_speakers", "ravdess_takes_per_actor",
           "sentence_vowels", "synthesize_take", "write_cremad", "write_ravdess"]
