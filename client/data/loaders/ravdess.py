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

from client.data.loaders.audio_files import check_audio_header
from client.data.loaders.base import DatasetFormatError, EmotionData, Skipped, first_skips, folder_entries
from shared_models.taxonomy import EMOTION_INDEX, RAVDESS_CODES, valence_arousal

FILE_PATTERN = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})\.wav$", re.ASCII)
ACTOR_DIR = re.compile(r"^Actor_(\d{2})$", re.ASCII)
# Copies in the wild also spell the folders actor_03 or Actor_3: same actor, read as such.
ACTOR_DIR_VARIANT = re.compile(r"^actor[_ -]?(\d{1,2})$", re.ASCII | re.IGNORECASE)
AUDIO_MODALITIES = {"01": "audio-video", "03": "audio-only"}
SPEECH, SONG = "01", "02"
INTENSITY: dict[str, float] = {"01": 0.6, "02": 1.0}  # valence/arousal scale per intensity code


def load_ravdess(root: str | Path, include_song: bool = False) -> EmotionData:
    """Index a RAVDESS copy whose ``Actor_XX`` folders are directly under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(root, "no Actor_XX folders (RAVDESS clips are expected in Actor_01/ .. Actor_24/)")
    skipped: list[Skipped] = []
    files, folders = folder_entries(root, root, skipped)
    actor_dirs: list[tuple[Path, str]] = []
    for folder in folders:
        m = ACTOR_DIR.match(folder.name) or ACTOR_DIR_VARIANT.match(folder.name)
        if m:
            actor_dirs.append((folder, f"{int(m.group(1)):02d}"))
        elif _holds_wav(folder):
            skipped.append(Skipped(folder.name, "folder is not named Actor_XX: the clips in it are not read"))
    for path in files:
        if path.suffix.lower() == ".wav":
            skipped.append(Skipped(path.name, "clip is not inside an Actor_XX folder: not read"))
    if not actor_dirs:
        extra = f"; {len(skipped)} entries skipped, e.g. {first_skips(skipped)}" if skipped else ""
        raise DatasetFormatError(root, "no Actor_XX folders (RAVDESS clips are expected in Actor_01/ .. Actor_24/)"
                                       + extra)

    rows: list[tuple[str, str, str, str]] = []  # ref, actor, emotion, intensity
    for folder, folder_actor in actor_dirs:
        clips, subfolders = folder_entries(folder, root, skipped)
        for sub in subfolders:
            skipped.append(Skipped(sub.relative_to(root).as_posix(),
                                   "folder inside an actor folder is not read (clips must be directly in it)"))
        for path in clips:
            ref = path.relative_to(root).as_posix()
            row = _parse(path.name, ref, folder_actor, include_song, skipped)
            if row is not None and check_audio_header(path, ref, skipped):
                rows.append(row)
    if not rows:
        raise DatasetFormatError(root, f"no usable clips ({len(skipped)} skipped, e.g. {first_skips(skipped)})")

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


def _holds_wav(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() == ".wav" for p in folder.iterdir())
    except OSError:
        return False


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
