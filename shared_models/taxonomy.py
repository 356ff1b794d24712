"""One label taxonomy for every dataset FedEmo reads.

The 7 basic emotions in FER2013's order are the model's output classes. Each
published dataset codes them differently (RAF-DB starts at 1 with a different
order, CREMA-D has 6 three-letter codes, RAVDESS has 8 numeric codes including
"calm"), so every mapping is written out here and nowhere else. A code missing
from a mapping is an unknown label, which loaders report by file; they never
guess.
"""

from __future__ import annotations

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_EMOTIONS = len(EMOTIONS)
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}

# fer2013.csv `emotion` column.
FER2013_CODES: dict[int, str] = {
    0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral",
}
# RAF-DB basic `EmoLabel/list_patition_label.txt`.
RAFDB_CODES: dict[int, str] = {
    1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral",
}
# CREMA-D file name field 3. CREMA-D has no surprise.
CREMAD_CODES: dict[str, str] = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad",
}
# RAVDESS file name field 3. "calm" (02) is not one of the basic emotions; it is
# folded into neutral, the usual choice in 7-class speech-emotion work.
RAVDESS_CODES: dict[str, str] = {
    "01": "neutral", "02": "neutral", "03": "happy", "04": "sad",
    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise",
}

# Circumplex positions (valence, arousal) in [-1, 1] for each basic emotion,
# after Russell (1980) and the placements used in speech-emotion corpora. They
# give regression targets for datasets that annotate an emotion and its
# intensity (CREMA-D level, RAVDESS intensity) but no continuous labels.
CIRCUMPLEX: dict[str, tuple[float, float]] = {
    "angry": (-0.6, 0.8),
    "disgust": (-0.7, 0.3),
    "fear": (-0.6, 0.7),
    "happy": (0.8, 0.5),
    "sad": (-0.7, -0.4),
    "surprise": (0.3, 0.8),
    "neutral": (0.0, 0.0),
}


def valence_arousal(emotion: str, intensity: float = 1.0) -> tuple[float, float]:
    """Circumplex target scaled by intensity (0 = neutral point, 1 = full)."""
    v, a = CIRCUMPLEX[emotion]
    return (v * intensity, a * intensity)


# Demographic attributes FedEmo reports on, with the canonical group names every
# loader must produce. "unknown" is used wherever a dataset lacks the attribute.
UNKNOWN = "unknown"
AGE_BANDS: tuple[str, ...] = ("0-3", "4-19", "20-39", "40-69", "70+")


def age_band(age_years: float) -> str:
    """Map an age in years to RAF-DB's published bands, so all datasets share them."""
    if age_years < 4:
        return "0-3"
    if age_years < 20:
        return "4-19"
    if age_years < 40:
        return "20-39"
    if age_years < 70:
        return "40-69"
    return "70+"
