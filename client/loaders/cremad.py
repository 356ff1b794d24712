"""CREMA-D reader: ``AudioWAV/<ActorID>_<SENTENCE>_<EMOTION>_<LEVEL>.wav`` plus ``VideoDemographics.csv``.

Only indexes clips (waveforms are decoded on demand by
``shared_models.audio_features.read_waveform``), but opens every header with
``soundfile.info`` because the real release ships broken files
(``1076_MTI_SAD_XX`` has no audio): those are named and skipped here, not
discovered mid-training. With ``with_faces`` it also reads the 48x48 frame a
user extracted from each clip's video (``FaceFrames/<clip stem>.png``) and
returns "fusion" data.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from client.loaders.base import DatasetFormatError, EmotionData, Skipped
from shared_models.taxonomy import CREMAD_CODES, EMOTION_INDEX, UNKNOWN, age_band, valence_arousal

AUDIO_DIR = "AudioWAV"
FACE_DIR = "FaceFrames"
DEMOGRAPHICS_FILE = "VideoDemographics.csv"
DEMOGRAPHIC_COLUMNS = ("ActorID", "Age", "Sex", "Race", "Ethnicity")
SENTENCES = frozenset({"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"})
# Emotion intensity per level code, for valence/arousal targets (XX = unspecified: medium).
LEVEL_INTENSITY: dict[str, float] = {"LO": 0.33, "MD": 0.66, "HI": 1.0, "XX": 0.66}
FILE_PATTERN = re.compile(r"^(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")
FACE_SIZE = 48

_SEX = {"male": "male", "female": "female"}
_RACE = {"african american": "african_american", "asian": "asian", "caucasian": "caucasian", "unknown": UNKNOWN}
_ETHNICITY = {"hispanic": "hispanic", "not hispanic": "not_hispanic"}


@dataclass(frozen=True)
class _Clip:
    ref: str
    actor: str
    emotion: str
    level: str


def load_cremad(root: str | Path, with_faces: bool = False) -> EmotionData:
    """Index a CREMA-D copy at ``root``; every left-out file is in ``skipped`` with its reason."""
    root = Path(root)
    audio_dir = root / AUDIO_DIR
    if not audio_dir.is_dir():
        raise DatasetFormatError(audio_dir, f"folder missing: CREMA-D clips are expected in {AUDIO_DIR}/")
    demographics = read_demographics(root / DEMOGRAPHICS_FILE)
    files = sorted(p for p in audio_dir.iterdir() if p.is_file())
    if not files:
        raise DatasetFormatError(audio_dir, "no files: expected <ActorID>_<SENTENCE>_<EMOTION>_<LEVEL>.wav clips")

    clips: list[_Clip] = []
    skipped: list[Skipped] = []
    for path in files:
        clip = _parse(path, root, skipped)
        if clip is not None and check_audio_header(path, clip.ref, skipped):
            clips.append(clip)

    faces = None
    if with_faces:
        clips, faces = _attach_faces(root, clips, skipped)
    if not clips:
        reasons = "; ".join(f"{s.ref}: {s.reason}" for s in skipped[:3])
        raise DatasetFormatError(audio_dir, f"no usable clips ({len(skipped)} skipped, e.g. {reasons})")
    return _assemble(root, clips, demographics, skipped, faces)


def _parse(path: Path, root: Path, skipped: list[Skipped]) -> _Clip | None:
    """File name -> clip, or a Skipped saying which part of the name is wrong."""
    ref = path.relative_to(root).as_posix()
    m = FILE_PATTERN.match(path.name)
    if m is None:
        skipped.append(Skipped(ref, "file name does not match <ActorID>_<SENTENCE>_<EMOTION>_<LEVEL>.wav"))
        return None
    actor, sentence, code, level = m.groups()
    if code not in CREMAD_CODES:
        skipped.append(Skipped(ref, f"unknown emotion code {code!r} (expected one of {', '.join(CREMAD_CODES)})"))
        return None
    if sentence not in SENTENCES:
        skipped.append(Skipped(ref, f"unknown sentence code {sentence!r}"))
        return None
    if level not in LEVEL_INTENSITY:
        skipped.append(Skipped(ref, f"unknown level code {level!r} (expected LO, MD, HI or XX)"))
        return None
    return _Clip(ref=ref, actor=actor, emotion=CREMAD_CODES[code], level=level)


def check_audio_header(path: Path, ref: str, skipped: list[Skipped]) -> bool:
    """Cheap header check (shared by the voice loaders): the file opens as audio and has frames.

    Appends a ``Skipped`` naming the problem and returns False otherwise.
    """
    try:
        info = sf.info(str(path))
    except Exception as exc:  # LibsndfileError / RuntimeError / OSError depending on the soundfile version
        skipped.append(Skipped(ref, f"unreadable audio header ({exc})"))
        return False
    if info.frames <= 0:
        skipped.append(Skipped(ref, "audio file has zero frames (no audio)"))
        return False
    return True


def read_demographics(path: Path) -> dict[str, dict[str, str]]:
    """ActorID -> {"sex", "age", "race", "ethnicity"} in taxonomy group names.

    A missing file or column is an error (the bias reports depend on it);
    a value outside the published vocabulary becomes "unknown".
    """
    if not path.is_file():
        raise DatasetFormatError(path, f"file missing: CREMA-D needs {DEMOGRAPHICS_FILE} next to {AUDIO_DIR}/")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        for column in DEMOGRAPHIC_COLUMNS:
            if column not in header:
                raise DatasetFormatError(path, f"column {column!r} missing (header: {', '.join(header) or 'empty'})")
        table = {}
        for row in reader:
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            table[row["ActorID"]] = {
                "sex": _SEX.get(row["Sex"].lower(), UNKNOWN),
                "age": _age(row["Age"]),
                "race": _RACE.get(row["Race"].lower(), UNKNOWN),
                "ethnicity": _ETHNICITY.get(row["Ethnicity"].lower(), UNKNOWN),
            }
    return table


def _age(text: str) -> str:
    try:
        return age_band(float(text))
    except ValueError:
        return UNKNOWN


def _attach_faces(root: Path, clips: list[_Clip], skipped: list[Skipped]) -> tuple[list[_Clip], np.ndarray]:
    """Keep clips that have a readable face frame; frames of another size are resized to 48x48."""
    from PIL import Image

    kept, faces = [], []
    for clip in clips:
        face_ref = f"{FACE_DIR}/{Path(clip.ref).stem}.png"
        try:
            with Image.open(root / face_ref) as img:
                gray = img.convert("L")
                if gray.size != (FACE_SIZE, FACE_SIZE):
                    gray = gray.resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
                faces.append(np.asarray(gray, dtype=np.uint8))
        except FileNotFoundError:
            skipped.append(Skipped(clip.ref, f"no face frame {face_ref}"))
            continue
        except Exception as exc:  # PIL.UnidentifiedImageError, truncated files
            skipped.append(Skipped(clip.ref, f"unreadable face frame {face_ref} ({exc})"))
            continue
        kept.append(clip)
    return kept, np.stack(faces) if faces else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8)


def _assemble(root: Path, clips: list[_Clip], demographics: dict[str, dict[str, str]],
              skipped: list[Skipped], faces: np.ndarray | None) -> EmotionData:
    unknown = {attr: UNKNOWN for attr in ("sex", "age", "race", "ethnicity")}
    demo_rows = [demographics.get(c.actor, unknown) for c in clips]
    return EmotionData(
        dataset="cremad",
        modality="voice" if faces is None else "fusion",
        root=root,
        refs=np.array([c.ref for c in clips], dtype=object),
        labels=np.array([EMOTION_INDEX[c.emotion] for c in clips], dtype=np.int64),
        subjects=np.array([c.actor for c in clips], dtype=object),
        demographics={attr: np.array([d[attr] for d in demo_rows], dtype=object) for attr in unknown},
        published_split=np.full(len(clips), "", dtype=object),
        valence_arousal=np.array([valence_arousal(c.emotion, LEVEL_INTENSITY[c.level]) for c in clips],
                                 dtype=np.float32).reshape(-1, 2),
        faces=faces,
        skipped=skipped,
    )
