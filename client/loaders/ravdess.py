"""RAVDESS reader: ``Actor_XX/MM-VC-EM-IN-ST-RP-AC.wav``.

The seven two-digit fields are modality (01 audio-video, 02 video-only, 03
audio-only), vocal channel (01 speech, 02 song), emotion (01-08), intensity
(01 normal, 02 strong), statement, repetition and actor (01-24; odd male,
even female). Only speech audio is kept by default (song on request). Like the
CREMA-D reader it indexes clips and checks each header with ``soundfile.info``
so broken files are named and skipped up front. RAVDESS publishes no age or
race, so those stay "unknown".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from client.loaders.base import DatasetFormatError, EmotionData, Skipped
from client.loaders.cremad import check_audio_header
from shared_models.taxonomy import EMOTION_INDEX, RAVDESS_CODES, valence_arousal

FILE_PATTERN = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.wav$")
ACTOR_DIR = re.compile(r"^Actor_(\d{2})$")
AUDIO_MODALITIES = {"01": "audio-video", "03": "audio-only"}
SPEECH, SONG = "01", "02"
INTENSITY: dict[str, float] = {"01": 0.6, "02": 1.0}  # valence/arousal scale per intensity code


def load_ravdess(root: str | Path, include_song: bool = False) -> EmotionData:
    """Index a RAVDESS copy whose ``Actor_XX`` folders are directly under ``root``."""
    root = Path(root)
    actor_dirs = sorted(p for p in root.iterdir() if p.is_dir() and ACTOR_DIR.match(p.name)) if root.is_dir() else []
    if not actor_dirs:
        raise DatasetFormatError(root, "no Actor_XX folders (RAVDESS clips are expected in Actor_01/ .. Actor_24/)")

    rows: list[tuple[str, str, str, str]] = []  # ref, actor, emotion, intensity
    skipped: list[Skipped] = []
    for folder in actor_dirs:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            ref = path.relative_to(root).as_posix()
            row = _parse(path.name, ref, ACTOR_DIR.match(folder.name).group(1), include_song, skipped)
            if row is not None and check_audio_header(path, ref, skipped):
                rows.append(row)
    if not rows:
        reasons = "; ".join(f"{s.ref}: {s.reason}" for s in skipped[:3])
        raise DatasetFormatError(root, f"no usable clips ({len(skipped)} skipped, e.g. {reasons})")

    actors = [r[1] for r in rows]
    return EmotionData(
        dataset="ravdess",
        modality="voice",
        root=root,
        refs=np.array([r[0] for r in rows], dtype=object),
        labels=np.array([EMOTION_INDEX[r[2]] for r in rows], dtype=np.int64),
        subjects=np.array(actors, dtype=object),
        demographics={"sex": np.array(["male" if int(a) % 2 else "female" for a in actors], dtype=object)},
        published_split=np.full(len(rows), "", dtype=object),
        valence_arousal=np.array([valence_arousal(r[2], INTENSITY[r[3]]) for r in rows],
                                 dtype=np.float32).reshape(-1, 2),
        skipped=skipped,
    )


def _parse(name: str, ref: str, folder_actor: str, include_song: bool,
           skipped: list[Skipped]) -> tuple[str, str, str, str] | None:
    """File name -> (ref, actor, emotion, intensity), or a Skipped naming the offending field."""
    m = FILE_PATTERN.match(name)
    if m is None:
        skipped.append(Skipped(ref, "file name does not match MM-VC-EM-IN-ST-RP-AC.wav (seven two-digit fields)"))
        return None
    modality, channel, code, intensity, statement, repetition, actor = m.groups()
    problem = None
    if modality not in AUDIO_MODALITIES:
        problem = f"modality {modality} has no audio (expected 01 audio-video or 03 audio-only)"
    elif channel not in (SPEECH, SONG):
        problem = f"unknown vocal channel {channel} (expected 01 speech or 02 song)"
    elif channel == SONG and not include_song:
        problem = "song (vocal channel 02) left out; pass include_song=True to keep it"
    elif code not in RAVDESS_CODES:
        problem = f"unknown emotion code {code} (expected 01-08)"
    elif intensity not in INTENSITY:
        problem = f"unknown intensity code {intensity} (expected 01 or 02)"
    elif statement not in ("01", "02") or repetition not in ("01", "02"):
        problem = f"unknown statement/repetition {statement}/{repetition} (expected 01 or 02)"
    elif actor != folder_actor:
        problem = f"actor {actor} in the name does not match folder Actor_{folder_actor}"
    if problem:
        skipped.append(Skipped(ref, problem))
        return None
    return ref, actor, RAVDESS_CODES[code], intensity
