"""RAF-DB (basic) reader: JPEG faces, a label list, and per-image attribute files (published layout).

Faces become 48x48 grayscale so RAF-DB and FER2013 feed the same models (constant and tiny images flagged).
No subject ids. A missing or malformed attribute file keeps the image with "unknown" demographics; a
missing or undecodable image, or a bad label line, is skipped and named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from client.data.loaders.base import (DatasetFormatError, EmotionData, Skipped, first_skips, outside_reason,
                                 read_text_lines)
from client.data.loaders.images import flag_faces, read_face_sized
from shared_models.taxonomy import AGE_BANDS, EMOTION_INDEX, RAFDB_CODES, UNKNOWN

# Published format facts.
LABEL_FILE = "EmoLabel/list_patition_label.txt"
ALIGNED_DIR = "Image/aligned"
ORIGINAL_DIR = "Image/original"
ANNOTATION_DIR = "Annotation/manual"
GENDER_CODES: dict[int, str] = {0: "male", 1: "female", 2: "unsure"}
RACE_CODES: dict[int, str] = {0: "caucasian", 1: "african_american", 2: "asian"}
AGE_CODES: dict[int, str] = dict(enumerate(AGE_BANDS))
ATTRIBUTE_LINES: dict[str, tuple[int, dict[int, str]]] = {
    "sex": (5, GENDER_CODES), "race": (6, RACE_CODES), "age": (7, AGE_CODES),  # 0-based line index
}
FACE_SIDE = 48


def load_rafdb(root: Path | str) -> EmotionData:
    """Read a RAF-DB basic folder into ``EmotionData`` (faces uint8 (N, 48, 48))."""
    root = Path(root)
    label_path = root / LABEL_FILE
    if not label_path.is_file():
        raise DatasetFormatError(label_path, f"label file not found (expected {LABEL_FILE} under {root})")
    entries, skipped = _read_labels(label_path)
    refs, labels, faces, sizes, demo_rows = [], [], [], [], []
    for name, label in entries:
        image = _read_image(root, name)
        if isinstance(image, Skipped):
            skipped.append(image)
            continue
        ref, face, size = image
        refs.append(ref)
        labels.append(label)
        faces.append(face)
        sizes.append(size)
        demo_rows.append(_read_attributes(root, root / ANNOTATION_DIR / f"{Path(name).stem}_manu_attri.txt"))
    if not refs:
        raise DatasetFormatError(root, f"no usable images ({len(skipped)} skipped; first: {first_skips(skipped)})")
    n = len(refs)
    return EmotionData(
        dataset="rafdb",
        modality="face",
        root=root,
        refs=np.array(refs, dtype=object),
        labels=np.array(labels, dtype=np.int64),
        subjects=np.full(n, "", dtype=object),
        demographics={a: np.array([d[a] for d in demo_rows], dtype=object) for a in ATTRIBUTE_LINES},
        published_split=np.array([_split_of(r) for r in refs], dtype=object),
        faces=np.stack(faces),
        skipped=skipped,
        flagged=flag_faces(refs, np.stack(faces), sizes),
    )


def _read_labels(path: Path) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """(image name, emotion index) per good line; bad lines become Skipped with their line number."""
    entries: list[tuple[str, int]] = []
    skipped: list[Skipped] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        ref = f"{LABEL_FILE}:{line_no}"
        fields = line.split()
        if len(fields) != 2:
            skipped.append(Skipped(ref, f"expected '<image name> <label>', found {len(fields)} fields"))
            continue
        name, code_text = fields
        code = int(code_text) if code_text.isascii() and code_text.isdigit() else None
        if code not in RAFDB_CODES:
            skipped.append(Skipped(ref, f"unknown emotion code '{code_text}' for {name} (expected 1-7)"))
            continue
        if "/" in name or "\\" in name or name in (".", ".."):
            skipped.append(Skipped(ref, f"image name {name!r} is a path; expected a file name such as train_00001.jpg"))
            continue
        if name in first_line:
            skipped.append(Skipped(ref, f"{name} is listed again (first at line {first_line[name]}); "
                                        "the first label is used"))
            continue
        first_line[name] = line_no
        entries.append((name, EMOTION_INDEX[RAFDB_CODES[code]]))
    return entries, skipped


def _read_image(root: Path, name: str) -> tuple[str, np.ndarray, tuple[int, int]] | Skipped:
    """The aligned image if present, else the original; 48x48 grayscale uint8, or why not."""
    aligned = f"{ALIGNED_DIR}/{Path(name).stem}_aligned.jpg"
    original = f"{ORIGINAL_DIR}/{name}"
    present = [ref for ref in (aligned, original) if (root / ref).is_symlink() or (root / ref).exists()]
    if not present:
        return Skipped(aligned, f"image not found (looked for {aligned} and {original})")
    ref = next((r for r in present if (root / r).is_file()), present[0])
    reason = outside_reason(root / ref, root)
    if reason:
        return Skipped(ref, reason)
    if not (root / ref).is_file():
        return Skipped(ref, "not a regular file")
    read = read_face_sized(root / ref, ref, FACE_SIDE)
    return read if isinstance(read, Skipped) else (ref, *read)


def _read_attributes(root: Path, path: Path) -> dict[str, str]:
    """Sex, race and age from lines 6-8 of the attribute file; "unknown" where missing or malformed."""
    result = {attr: UNKNOWN for attr in ATTRIBUTE_LINES}
    if not path.is_file() or outside_reason(path, root):
        return result
    try:
        lines = read_text_lines(path)
    except DatasetFormatError:  # unreadable: the image keeps its label, demographics stay unknown (data check lists them)
        return result
    for attr, (index, codes) in ATTRIBUTE_LINES.items():
        text = lines[index].strip() if index < len(lines) else ""
        if text.isascii() and text.isdigit() and int(text) in codes:
            result[attr] = codes[int(text)]
    return result


def _split_of(ref: str) -> str:
    """train_/test_ name prefix -> published split."""
    stem = Path(ref).name
    return "train" if stem.startswith("train_") else "test" if stem.startswith("test_") else ""

