"""Synthetic faces written in the published FER2013 (CSV of pixels) and RAF-DB (aligned JPEGs) layouts."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared_models.taxonomy import AGE_BANDS, EMOTIONS, FER2013_CODES, RAFDB_CODES
from simulations.synthetic.faces.generate import _generate_meta, generate_faces
from simulations.synthetic.faces.params import FaceDifficulty

_FER_CODE = {name: code for code, name in FER2013_CODES.items()}
_RAF_CODE = {name: code for code, name in RAFDB_CODES.items()}
_RAF_GENDER = {"male": 0, "female": 1, "unsure": 2}
_RAF_RACE = {"caucasian": 0, "african_american": 1, "asian": 2}
_PIXEL_TEXT = [str(i) for i in range(256)]


def write_fer2013(out_dir: Path, n: int, seed: int, difficulty: FaceDifficulty | None = None) -> Path:
    """Write ``fer2013.csv`` (published layout) and the ``fer2013_demographics.csv`` sidecar.

    Usage: train rows -> Training; test rows alternate PublicTest/PrivateTest
    (so ~80/10/10). The sidecar (``row,subject,sex,age,race``, row = 0-based
    data row) is ours: real FER2013 has no demographics.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = generate_faces(n, seed, 48, difficulty)
    usage = _fer_usage(data.split)
    path = out_dir / "fer2013.csv"
    with open(path, "w", newline="") as f:
        f.write("emotion,pixels,Usage\n")
        for label, face, use in zip(data.labels, data.faces.reshape(n, -1), usage):
            pixels = " ".join([_PIXEL_TEXT[x] for x in face.tolist()])
            f.write(f"{_FER_CODE[EMOTIONS[label]]},{pixels},{use}\n")
    with open(out_dir / "fer2013_demographics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["row", "subject", "sex", "age", "race"])
        for i in range(n):
            w.writerow([i, data.subjects[i], data.demographics["sex"][i], data.demographics["age"][i],
                        data.demographics["race"][i]])
    return path


def _fer_usage(split: np.ndarray) -> list[str]:
    """Training for train rows; test rows alternate PublicTest / PrivateTest."""
    out, k = [], 0
    for s in split:
        if s == "train":
            out.append("Training")
        else:
            out.append("PublicTest" if k % 2 == 0 else "PrivateTest")
            k += 1
    return out


@dataclass(frozen=True)
class RafdbRecord:
    """What the RAF-DB writer recorded for one image (row of the label file)."""

    name: str  # e.g. train_00001.jpg
    emotion: str
    sex: str  # male | female | unsure (as annotated)
    age: str
    race: str
    source_row: int  # row of generate_faces(n, seed, 100) it came from


def rafdb_records(n: int, seed: int, unsure_fraction: float = 0.03) -> list[RafdbRecord]:
    """The label-file rows ``write_rafdb(…, n, seed)`` writes, train first, in file order.

    Cheap (no rendering), so tests and reports can know what was written.
    A small fraction of images get gender "unsure" (code 2), as in RAF-DB.
    """
    data = _generate_meta(n, seed, 0.2, None, 1.0)[0]
    unsure = np.random.default_rng([seed, 10]).random(n) < unsure_fraction
    records: list[RafdbRecord] = []
    for part, digits in (("train", 5), ("test", 4)):
        rows = np.flatnonzero(data.split == part)
        for k, row in enumerate(rows, start=1):
            records.append(RafdbRecord(
                name=f"{part}_{k:0{digits}d}.jpg", emotion=EMOTIONS[data.labels[row]],
                sex="unsure" if unsure[row] else str(data.demographics["sex"][row]),
                age=str(data.demographics["age"][row]), race=str(data.demographics["race"][row]),
                source_row=int(row),
            ))
    return records


def write_rafdb(out_dir: Path, n: int, seed: int, difficulty: FaceDifficulty | None = None) -> Path:
    """Write RAF-DB basic: label list, 100x100 RGB aligned JPEGs, manual attribute files.

    Files are named and ordered as ``rafdb_records(n, seed)`` lists them.
    """
    out_dir = Path(out_dir)
    for sub in ("EmoLabel", "Image/aligned", "Annotation/manual"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    data = generate_faces(n, seed, 100, difficulty)
    records = rafdb_records(n, seed)
    lines = []
    for rec in records:
        stem = rec.name[:-4]
        gray = data.faces[rec.source_row]
        Image.fromarray(np.stack([gray] * 3, axis=-1)).save(
            out_dir / "Image/aligned" / f"{stem}_aligned.jpg", quality=92)
        attributes = _rafdb_attributes(rec, data.landmarks[rec.source_row])
        (out_dir / "Annotation/manual" / f"{stem}_manu_attri.txt").write_text(attributes)
        lines.append(f"{rec.name} {_RAF_CODE[rec.emotion]}\n")
    (out_dir / "EmoLabel/list_patition_label.txt").write_text("".join(lines))
    return out_dir


def _rafdb_attributes(rec: RafdbRecord, landmarks: np.ndarray) -> str:
    """Five landmark lines (eyes, nose tip, mouth corners), then gender, race and age codes."""
    body = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in landmarks)
    return body + f"{_RAF_GENDER[rec.sex]}\n{_RAF_RACE[rec.race]}\n{AGE_BANDS.index(rec.age)}\n"
