"""Synthetic speech written in the published CREMA-D (16 kHz, demographics CSV, optional face frames) and
RAVDESS (48 kHz, actor folders) layouts; each clip depends only on its speaker and take, never on n_clips."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from shared_models.taxonomy import CREMAD_CODES, age_band
from simulations.synthetic.voices.population import Speaker, VoiceDifficulty, cremad_speakers, ravdess_speakers
from simulations.synthetic.voices.synthesis import Take, _write_wav, sentence_vowels, synthesize_take

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
