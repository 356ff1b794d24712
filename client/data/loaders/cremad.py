"""CREMA-D reader: ``AudioWAV/<ActorID>_<SENTENCE>_<EMOTION>_<LEVEL>.wav`` plus ``VideoDemographics.csv``.

Indexes clips (decoded on demand) but opens every header, so the release's broken files are named and
skipped here, not mid-training. ``with_faces`` adds each clip's extracted 48x48 frame (``FaceFrames/``) as
"fusion" data. A demographics file that would be silently wrong (a duplicated column, a repeated header,
an ActorID listed twice with different values) is refused.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.data.loaders.audio_files import check_audio_header  # noqa: F401  (also imported from here by callers)
from client.data.loaders.base import (DatasetFormatError, EmotionData, Skipped, first_skips, folder_entries,
                                 outside_reason, read_text_lines, unique_columns)
from shared_models.taxonomy import CREMAD_CODES, EMOTION_INDEX, UNKNOWN, age_band, valence_arousal

AUDIO_DIR = "AudioWAV"
FACE_DIR = "FaceFrames"
DEMOGRAPHICS_FILE = "VideoDemographics.csv"
SUMMARY_TABLE = "processedResults/summaryTable.csv"  # optional: the release's list of clips and crowd votes
DEMOGRAPHIC_COLUMNS = ("ActorID", "Age", "Sex", "Race", "Ethnicity")
SENTENCES = frozenset({"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"})
# Emotion intensity per level code, for valence/arousal targets (XX = unspecified: medium).
LEVEL_INTENSITY: dict[str, float] = {"LO": 0.33, "MD": 0.66, "HI": 1.0, "XX": 0.66}
FILE_PATTERN = re.compile(r"^(\d+)_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$", re.ASCII)
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
    skipped: list[Skipped] = []
    demographics = read_demographics(root / DEMOGRAPHICS_FILE, skipped)
    files, folders = folder_entries(audio_dir, root, skipped)
    for folder in folders:
        skipped.append(Skipped(folder.relative_to(root).as_posix(),
                               f"folder inside {AUDIO_DIR}/ is not read (clips must be directly in {AUDIO_DIR}/)"))
    if not files and not skipped:
        raise DatasetFormatError(audio_dir, "no files: expected <ActorID>_<SENTENCE>_<EMOTION>_<LEVEL>.wav clips")

    clips: list[_Clip] = []
    for path in files:
        clip = _parse(path, root, skipped)
        if clip is not None and check_audio_header(path, clip.ref, skipped):
            clips.append(clip)

    _listed_but_missing(root, {p.name for p in files}, skipped)
    faces, sizes = None, None
    if with_faces:
        clips, faces, sizes = _attach_faces(root, clips, skipped)
    if not clips:
        raise DatasetFormatError(audio_dir, f"no usable clips ({len(skipped)} skipped, e.g. {first_skips(skipped)})")
    data = _assemble(root, clips, demographics, skipped, faces)
    if faces is not None:
        from client.data.loaders.images import flag_faces

        data.flagged = flag_faces(data.refs, faces, sizes)
    return data


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


def _listed_but_missing(root: Path, present: set[str], skipped: list[Skipped]) -> None:
    """Clips the release's ``processedResults/summaryTable.csv`` lists but ``AudioWAV/`` lacks: named skips.

    The table is optional (a copy may hold only AudioWAV/); when present it is
    the release's list of clips, so a clip lost in copying is named, not just
    absent. A table without a ``FileName`` column is named and ignored.
    """
    table = root / SUMMARY_TABLE
    if not table.is_file():
        return
    try:
        lines = read_text_lines(table)
    except DatasetFormatError as err:
        skipped.append(Skipped(SUMMARY_TABLE, f"{err.problem}; not used to find missing clips"))
        return
    header = [h.strip() for h in next(csv.reader(lines[:1]), [])]
    if "FileName" not in header:
        skipped.append(Skipped(SUMMARY_TABLE, "no FileName column; not used to find missing clips"))
        return
    column = header.index("FileName")
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        stem = fields[column].strip() if column < len(fields) else ""
        if stem and f"{stem}.wav" not in present:
            skipped.append(Skipped(f"{AUDIO_DIR}/{stem}.wav", f"listed in {SUMMARY_TABLE} but missing from {AUDIO_DIR}/"))


def read_demographics(path: Path, notes: list[Skipped] | None = None) -> dict[str, dict[str, str]]:
    """ActorID -> {"sex", "age", "race", "ethnicity"} in taxonomy group names.

    A missing file or column is an error (the bias reports depend on it);
    a value outside the published vocabulary becomes "unknown". A duplicate
    column, a repeated header line or an ActorID listed twice with different
    values is an error naming the lines; an identical repeat goes to ``notes``.
    """
    if not path.is_file():
        raise DatasetFormatError(path, f"file missing: CREMA-D needs {DEMOGRAPHICS_FILE} next to {AUDIO_DIR}/")
    reason = outside_reason(path, path.parent)
    if reason:
        raise DatasetFormatError(path, reason)
    records = []
    for line_no, line in enumerate(read_text_lines(path), start=1):  # UTF-8 with or without BOM, or Latin-1
        try:
            records.append(next(csv.reader([line]), []))  # one line at a time: an unclosed quote spoils one line
        except csv.Error as err:
            raise DatasetFormatError(path, f"line {line_no}: not a valid CSV line ({err})") from None
    header = [h.strip() for h in (records[0] if records else [])]
    for column in DEMOGRAPHIC_COLUMNS:
        if column not in header:
            raise DatasetFormatError(path, f"column {column!r} missing (header: {', '.join(header) or 'empty'})")
    columns = unique_columns(path, header)
    table = {}
    first_seen: dict[str, tuple[int, dict[str, str]]] = {}
    for line_no, record in enumerate(records[1:], start=2):
        if not any(field.strip() for field in record):
            continue
        fields = [field.strip() for field in record]
        if fields == header:
            raise DatasetFormatError(path, f"line {line_no} repeats the header (two files joined into one?); "
                                           "remove it and check that each ActorID is listed once")
        row = {column: fields[columns[column]] if columns[column] < len(fields) else ""
               for column in DEMOGRAPHIC_COLUMNS}
        if not row["ActorID"]:
            raise DatasetFormatError(path, f"line {line_no}: ActorID is empty")
        if row["ActorID"] in first_seen:
            first_line, first = first_seen[row["ActorID"]]
            differ = [c for c in DEMOGRAPHIC_COLUMNS if first[c] != row[c]]
            if differ:
                raise DatasetFormatError(path, f"line {line_no}: ActorID {row['ActorID']} is listed again with "
                                               "different values (" + ", ".join(
                                                   f"{c} {first[c]!r} at line {first_line}, {row[c]!r} here"
                                                   for c in differ) + "); keep the right line")
            if notes is not None:
                notes.append(Skipped(f"{DEMOGRAPHICS_FILE}:{line_no}", f"repeats ActorID {row['ActorID']} of line "
                                                                       f"{first_line} with the same values (ignored)"))
            continue
        first_seen[row["ActorID"]] = (line_no, row)
        table[row["ActorID"]] = {
            "sex": _SEX.get(row["Sex"].lower(), UNKNOWN),
            "age": _age(row["Age"]),
            "race": _RACE.get(row["Race"].lower(), UNKNOWN),
            "ethnicity": _ETHNICITY.get(row["Ethnicity"].lower(), UNKNOWN),
        }
    return table


def _age(text: str) -> str:
    try:
        years = float(text)
    except ValueError:
        return UNKNOWN
    return age_band(years) if 0 <= years < 130 else UNKNOWN  # also NaN and inf


def _attach_faces(root: Path, clips: list[_Clip],
                  skipped: list[Skipped]) -> tuple[list[_Clip], np.ndarray, list[tuple[int, int]]]:
    """Keep clips that have a readable face frame; frames of another size are resized to 48x48."""
    from client.data.loaders.images import read_face_sized

    kept, faces, sizes = [], [], []
    for clip in clips:
        face_ref = f"{FACE_DIR}/{Path(clip.ref).stem}.png"
        path = root / face_ref
        if not (path.is_symlink() or path.exists()):
            skipped.append(Skipped(clip.ref, f"no face frame {face_ref}"))
            continue
        reason = outside_reason(path, root)
        read = Skipped(face_ref, reason) if reason else read_face_sized(path, face_ref, FACE_SIZE)
        if isinstance(read, Skipped):
            skipped.append(Skipped(clip.ref, f"unusable face frame {face_ref}: {read.reason}"))
            continue
        kept.append(clip)
        faces.append(read[0])
        sizes.append(read[1])
    return kept, np.stack(faces) if faces else np.zeros((0, FACE_SIZE, FACE_SIZE), np.uint8), sizes


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
