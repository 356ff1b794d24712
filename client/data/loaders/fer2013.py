"""FER2013 reader: one CSV of 48x48 grayscale faces, pixels as space-separated text.

Reads ``fer2013.csv`` and the copies in the wild (``icml_face_data.csv``, ``train.csv``), in torchvision's
priority order, plus an optional ``fer2013_demographics.csv`` sidecar (FER2013 has no demographics). A bad
row is skipped and reported by line; what would be silently wrong (a duplicated column, a repeated header
with a row-joined sidecar, a contradictory sidecar row) is refused. Details: docs/design_notes.md.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np

from client.data.loaders.base import (DEMOGRAPHIC_ATTRIBUTES, DatasetFormatError, EmotionData, Skipped, os_problem,
                                 outside_reason, unique_columns)
from client.data.loaders.images import flag_faces
from shared_models.taxonomy import EMOTION_INDEX, FER2013_CODES, UNKNOWN

# Published format facts.
CSV_NAMES: tuple[str, ...] = ("fer2013.csv", "icml_face_data.csv", "train.csv")
SIDECAR_NAME = "fer2013_demographics.csv"
IMAGE_SIDE = 48
USAGE_SPLITS: dict[str, str] = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}

_PIXEL_CHARS = b"0123456789 \t\r\n"
_MAX_PIXEL_CHARS = IMAGE_SIDE * IMAGE_SIDE * 4 + 64  # "255 " per pixel, some slack for extra spaces


class _Row(NamedTuple):
    """One usable data row of the CSV."""

    data_row: int  # 0-based index among data rows (what the sidecar's ``row`` refers to)
    line: int  # 1-based file line
    label: int
    split: str
    pixels: np.ndarray


def find_fer2013_csv(root: Path | str) -> Path:
    """The FER2013 CSV under ``root`` (or ``root`` itself if it is a file); names every place looked."""
    root = Path(root)
    if root.is_file():
        return root
    folders = (root, root / "fer2013")
    for name in CSV_NAMES:
        for folder in folders:
            path = folder / name
            if path.is_symlink() or path.exists():
                reason = outside_reason(path, root)
                if reason:
                    raise DatasetFormatError(path, f"{reason}; point the data folder at the real file's folder")
                if not path.is_file():
                    raise DatasetFormatError(path, "is not a regular file")
                return path
    raise DatasetFormatError(
        root, f"no FER2013 CSV found; looked for {', '.join(CSV_NAMES)} in {root} and {root / 'fer2013'}"
    )


def load_fer2013(root: Path | str, demographics_csv: Path | str | None = None) -> EmotionData:
    """Read a FER2013 folder into ``EmotionData`` (faces uint8 (N, 48, 48)).

    ``demographics_csv`` overrides the sidecar next to the CSV. Refs are
    ``<csv name>:<line>`` with 1-based file lines (the header is line 1), and
    ``root`` of the result is the folder holding the CSV, so ``path_of`` works.
    Usage Training -> "train", PublicTest/PrivateTest -> "test", anything else
    -> "" (no published split); ``train.csv`` rows are "train".
    """
    path = find_fer2013_csv(root)
    rows, skipped, n_data, repeated_headers = _read_rows(path)
    if not rows:
        raise DatasetFormatError(path, _all_bad_message(n_data, skipped))
    data_rows = np.array([r.data_row for r in rows], dtype=np.int64)
    sidecar = Path(demographics_csv) if demographics_csv is not None else path.parent / SIDECAR_NAME
    if demographics_csv is not None and not sidecar.is_file():
        raise DatasetFormatError(sidecar, "demographics file not found")
    if sidecar.is_file() and repeated_headers:
        raise DatasetFormatError(path, f"line {repeated_headers[0]} repeats the header (two exports joined into one "
                                       f"file?): {sidecar.name} is joined by data row number, which cannot be matched "
                                       "after it; split the file, or remove the line and renumber the sidecar")
    subjects, demographics = (_read_sidecar(sidecar, data_rows, skipped) if sidecar.is_file()
                              else _no_sidecar(len(rows)))
    refs = np.array([f"{path.name}:{r.line}" for r in rows], dtype=object)
    faces = np.stack([r.pixels for r in rows]).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return EmotionData(
        dataset="fer2013",
        modality="face",
        root=path.parent,
        refs=refs,
        labels=np.array([r.label for r in rows], dtype=np.int64),
        subjects=subjects,
        demographics=demographics,
        published_split=np.array([r.split for r in rows], dtype=object),
        faces=faces,
        skipped=skipped,
        flagged=flag_faces(refs, faces),
    )


def _decode(raw: bytes) -> str:
    """One line of bytes as text: UTF-8, else Windows-1252/Latin-1 (never a UnicodeDecodeError)."""
    raw = raw.rstrip(b"\r\n")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _csv_lines(path: Path):
    """(1-based line number, fields or a csv error message) per physical line.

    FER2013 never spreads a record over several lines, so each line is parsed
    on its own: an unclosed quote spoils only its own line (a whole-file
    ``csv.reader`` would swallow every line after it into one field), and an
    over-long field or a NUL byte is that line's problem, not the file's.
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DatasetFormatError(path, f"cannot read file: {os_problem(err)}") from None
    with f:
        for line_no, raw in enumerate(f, start=1):
            text = _decode(raw)
            if line_no == 1:
                text = text.lstrip("\ufeff")
            if text.count('"') % 2:
                yield line_no, 'unclosed quote (") in this line'
                continue
            try:
                yield line_no, next(csv.reader([text]), [])
            except csv.Error as err:
                yield line_no, f"not a valid CSV line ({err})"


def _read_rows(path: Path) -> tuple[list[_Row], list[Skipped], int, list[int]]:
    """Parse every data row: a _Row for good rows, a Skipped for bad ones; the data row count; header repeats.

    A line that repeats the header is not a data row (it is skipped by name); its
    line numbers are returned so a sidecar join can refuse the file.
    """
    rows: list[_Row] = []
    skipped: list[Skipped] = []
    repeated: list[int] = []
    n_data = 0
    lines = _csv_lines(path)
    header = None
    for header_line, record in lines:
        if isinstance(record, str) or any(field.strip() for field in record):  # the first line that is not blank
            header = record
            break
    if header is None:
        raise DatasetFormatError(path, "file is empty (expected a header such as emotion,pixels,Usage)")
    if isinstance(header, str):
        raise DatasetFormatError(path, f"line {header_line}: the header is unusable: {header}")
    columns = _columns(path, header)
    header_names = [name.strip() for name in header]
    default_split = "train" if path.name == "train.csv" else ""
    for line, record in lines:
        if not isinstance(record, str) and all(not field.strip() for field in record):
            continue
        if not isinstance(record, str) and [field.strip() for field in record] == header_names:
            repeated.append(line)
            skipped.append(Skipped(ref=f"{path.name}:{line}", reason=f"repeats the header of line {header_line} "
                                                                     "(two exports joined into one file?)"))
            continue
        data_row = n_data
        n_data += 1
        parsed = record if isinstance(record, str) else _parse_record(record, columns, default_split)
        if isinstance(parsed, str):
            skipped.append(Skipped(ref=f"{path.name}:{line}", reason=parsed))
        else:
            rows.append(_Row(data_row, line, *parsed))
    return rows, skipped, n_data, repeated


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """Column positions by name (names stripped: icml_face_data.csv pads them with spaces)."""
    names = [h.strip().lstrip("\ufeff") for h in header]
    for required in ("emotion", "pixels"):
        if required not in names:
            raise DatasetFormatError(path, f"missing column '{required}' (header is {','.join(names)})")
    return unique_columns(path, names)


def _parse_record(record: list[str], columns: dict[str, int], default_split: str) -> tuple | str:
    """(label, split, pixels) or the reason the record is unusable."""
    if len(record) <= max(columns.values()):
        return f"expected {max(columns.values()) + 1} fields, found {len(record)}"
    code_text = record[columns["emotion"]].strip()
    if not (code_text.isascii() and code_text.lstrip("+-").isdigit()):
        return f"emotion '{code_text[:40]}' is not an integer code"
    code = int(code_text)
    if code not in FER2013_CODES:
        return f"unknown emotion code {code} (expected 0-6)"
    pixels = _parse_pixels(record[columns["pixels"]])
    if isinstance(pixels, str):
        return pixels
    split = default_split
    if "Usage" in columns:
        usage = record[columns["Usage"]].strip()
        if usage not in USAGE_SPLITS:
            return (f"Usage {usage!r} is not one of {', '.join(USAGE_SPLITS)}" if usage
                    else f"Usage is empty (expected one of {', '.join(USAGE_SPLITS)})")
        split = USAGE_SPLITS[usage]
    return EMOTION_INDEX[FER2013_CODES[code]], split, pixels


def _parse_pixels(text: str) -> np.ndarray | str:
    """2304 integers 0-255 as uint8, or the reason they are not.

    Checking the characters first (a C-level bytes.translate) lets np.fromstring,
    which parses in C, do the rest: together ~30 us a row instead of ~200 us for
    str.split plus int().
    """
    if len(text) > _MAX_PIXEL_CHARS:
        return f"pixels field is {len(text):,} characters long (48x48 pixels take at most {_MAX_PIXEL_CHARS:,})"
    if text.encode("ascii", "replace").translate(None, _PIXEL_CHARS) or not text.strip():
        return "pixels are not all non-negative integers"
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except ValueError:
        return "pixels are not all integers"
    if values.size != IMAGE_SIDE * IMAGE_SIDE:
        return f"expected {IMAGE_SIDE * IMAGE_SIDE} pixels, found {values.size}"
    if values.max() > 255:
        return f"pixel value {int(values.max())} is above 255"
    return values.astype(np.uint8)


def _all_bad_message(n_data: int, skipped: list[Skipped]) -> str:
    if n_data == 0:
        return "no data rows"
    first = skipped[0]
    return f"all {n_data} data rows are unusable (first: {first.ref}: {first.reason})"


def _no_sidecar(n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """FER2013 as published: no subject ids, every attribute unknown."""
    return np.full(n, "", dtype=object), {a: np.full(n, UNKNOWN, dtype=object) for a in DEMOGRAPHIC_ATTRIBUTES}


def _read_sidecar(path: Path, data_rows: np.ndarray,
                  notes: list[Skipped]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Subjects and demographics from the sidecar, aligned to the kept data rows.

    Rows the sidecar does not mention, and empty cells, become "unknown" (or ""
    for the subject); columns other than subject and the demographic attributes
    are ignored. A repeated header line, or a ``row`` given twice with different
    values, is refused (which one is right?); a row repeated with the same
    values is a note in ``notes``.
    """
    subjects, demographics = _no_sidecar(len(data_rows))
    position = {int(r): i for i, r in enumerate(data_rows)}
    lines = _csv_lines(path)
    _, first = next(lines, (1, []))
    if isinstance(first, str):
        raise DatasetFormatError(path, f"line 1: header is {first}")
    header = [h.strip() for h in first]
    if "row" not in header:
        raise DatasetFormatError(path, "missing column 'row'")
    col = unique_columns(path, header)
    wanted = [a for a in ("subject", *DEMOGRAPHIC_ATTRIBUTES) if a in col]
    seen: dict[int, tuple[int, tuple[str, ...]]] = {}  # row -> (line, its values)
    for line_no, record in lines:
        if isinstance(record, str):
            raise DatasetFormatError(path, f"line {line_no}: {record}")
        if not record or all(not field.strip() for field in record):
            continue
        if [field.strip() for field in record] == header:
            raise DatasetFormatError(path, f"line {line_no} repeats the header (two sidecars joined into one file?): "
                                           "its row numbers restart, so they cannot be matched to data rows")
        try:
            row = int(record[col["row"]])
        except (ValueError, IndexError):
            raise DatasetFormatError(path, f"line {line_no}: 'row' is not an integer") from None
        values = tuple(record[col[name]].strip() if col[name] < len(record) else "" for name in wanted)
        if row in seen:
            first_line, first_values = seen[row]
            if values != first_values:
                raise DatasetFormatError(path, f"line {line_no}: row {row} is listed again with different values "
                                               f"(first at line {first_line}: {', '.join(first_values)}; here: "
                                               f"{', '.join(values)}); keep the right one")
            notes.append(Skipped(f"{path.name}:{line_no}", f"repeats row {row} of line {first_line} with the same "
                                                           "values (ignored)"))
            continue
        seen[row] = (line_no, values)
        i = position.get(row)
        if i is None:
            continue
        for name, value in zip(wanted, values):
            if name == "subject":
                subjects[i] = value
            elif value:
                demographics[name][i] = value
    return subjects, demographics
