"""The one container every dataset loader returns, and the errors loaders raise.

Faces are small (48x48 bytes), so face loaders decode them up front into
``faces``. Audio is large, so voice loaders only index clips (labels, speaker,
demographics, file) and decode waveforms on demand with ``read_waveform`` for
the rows a client actually uses. Either way the metadata arrays are aligned
row by row, so partitioners and bias reports never need to touch raw inputs.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared_models.dataset_format_error import DatasetFormatError  # noqa: F401  (loaders raise it from here)
from shared_models.taxonomy import UNKNOWN

DEMOGRAPHIC_ATTRIBUTES: tuple[str, ...] = ("sex", "age", "race", "ethnicity")


@dataclass(frozen=True)
class Skipped:
    """A sample a loader left out on purpose, with the reason. Counted, never silent."""

    ref: str
    reason: str


@dataclass
class EmotionData:
    """Samples of one dataset folder, aligned row by row.

    ``refs`` says where each sample came from (``AudioWAV/1001_DFA_ANG_XX.wav``
    or ``fer2013.csv:17`` for line 17), so every later error or skip can name it.
    """

    dataset: str  # "fer2013" | "rafdb" | "cremad" | "ravdess"
    modality: str  # "face" | "voice" | "fusion"
    root: Path
    refs: np.ndarray  # object array of str
    labels: np.ndarray  # int64 indices into shared_models.taxonomy.EMOTIONS
    subjects: np.ndarray  # object array of str; "" where the dataset has no subject id
    demographics: dict[str, np.ndarray]  # attribute -> object array of group names
    published_split: np.ndarray  # object array: "train", "test" or "" (none published)
    valence_arousal: np.ndarray | None = None  # float32 (N, 2) in [-1, 1]
    faces: np.ndarray | None = None  # uint8 (N, 48, 48) for face and fusion data
    skipped: list[Skipped] = field(default_factory=list)
    # Samples kept but worth a look, by kind (``client.data.loaders.images.FLAG_*``: constant images, images under
    # 24 px): counted by ``fedemo data check`` and logged when a node or a simulation loads the folder.
    flagged: dict[str, list[str]] = field(default_factory=dict)
    # What the folder's consent manifest did (``client.data.consent.ConsentSummary``); set by ``load_dataset``.
    consent: Any = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        columns = {"refs": self.refs, "subjects": self.subjects, "published_split": self.published_split}
        columns.update({f"demographics[{k}]": v for k, v in self.demographics.items()})
        if self.valence_arousal is not None:
            columns["valence_arousal"] = self.valence_arousal
        if self.faces is not None:
            columns["faces"] = self.faces
        for name, column in columns.items():
            if len(column) != n:
                raise ValueError(f"{self.root}: column {name} has {len(column)} rows, labels have {n}")
        for attr in DEMOGRAPHIC_ATTRIBUTES:
            self.demographics.setdefault(attr, np.full(n, UNKNOWN, dtype=object))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray | list[int]) -> "EmotionData":
        """The same dataset restricted to ``rows`` (skips are kept: they describe the folder)."""
        rows = np.asarray(rows, dtype=np.int64)
        return EmotionData(
            dataset=self.dataset,
            modality=self.modality,
            root=self.root,
            refs=self.refs[rows],
            labels=self.labels[rows],
            subjects=self.subjects[rows],
            demographics={k: v[rows] for k, v in self.demographics.items()},
            published_split=self.published_split[rows],
            valence_arousal=None if self.valence_arousal is None else self.valence_arousal[rows],
            faces=None if self.faces is None else self.faces[rows],
            skipped=list(self.skipped),
            flagged={kind: list(refs) for kind, refs in self.flagged.items()},
            consent=self.consent,
        )

    def path_of(self, row: int) -> Path:
        """The file a row was read from (for voice clips and image files)."""
        return self.root / str(self.refs[row]).split(":")[0]


# ---------------------------------------------------------------------------
# Reading a hospital's folder without crashing on it
# ---------------------------------------------------------------------------


def os_problem(err: OSError) -> str:
    """An OSError in plain words, without repeating the path (the caller names the file)."""
    if isinstance(err, PermissionError):
        return "permission denied (the node's user cannot read it)"
    return f"{type(err).__name__}: {err.strerror or err}"


def printable(path: str | Path) -> str:
    """``path`` as text that can be printed and written to JSON whatever its bytes.

    A name that is not valid UTF-8 reaches Python as lone surrogates
    (``\\udcff``), which ``print`` and ``json``/report writers refuse with a
    ``UnicodeEncodeError``; here each such byte is written as ``\\xff``.
    """
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def utf8_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be recorded as text (its name is not valid UTF-8), or None."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return ("the path is not valid UTF-8 (its non-UTF-8 bytes are shown as \\x escapes); rename it: run "
                "records, reports and ledgers name it as text")
    return None


def unique_columns(path: Path, names: list[str]) -> dict[str, int]:
    """Column positions by name, refusing a name that appears twice (``DatasetFormatError`` naming it).

    With two ``emotion`` columns, which one holds the labels is a guess (FER2013
    trained on the wrong one, with 0 % of labels right): the hospital must say.
    Empty names (trailing commas) are ignored.
    """
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            continue
        if name in first:
            raise DatasetFormatError(path, f"column {name!r} appears twice in the header (columns {first[name] + 1} "
                                           f"and {i + 1}); keep one so it is clear which holds the data")
        first[name] = i
    return first


def read_text_lines(path: Path) -> list[str]:
    """The lines of a small text file, tolerant of how hospitals save CSVs.

    UTF-8 (with or without a byte-order mark), or Latin-1/Windows-1252 where a
    line is not valid UTF-8 (Excel on Windows); CRLF or LF line ends. An
    unreadable file is a ``DatasetFormatError`` naming it.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetFormatError(path, f"cannot read file: {os_problem(err)}") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for line in raw.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("cp1252", errors="replace"))
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def outside_reason(path: Path, root: Path) -> str | None:
    """Why ``path`` (a symlink, or under one) must not be read as part of ``root``, or None.

    A link whose target is missing is named as dangling; a link that leaves
    the dataset folder is refused, so a data folder can only ever feed the
    files it holds.
    """
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return f"dangling symlink (its target {os.readlink(path) if path.is_symlink() else '?'} does not exist)"
    except (OSError, RuntimeError) as err:  # symlink loops
        return f"unresolvable path ({type(err).__name__}: {err})"
    real_root = root.resolve()
    if target != real_root and real_root not in target.parents:
        return f"symlink to {target}, outside the dataset folder {real_root} (copy the file in instead)"
    return None


def folder_entries(folder: Path, root: Path, skipped: list[Skipped]) -> tuple[list[Path], list[Path]]:
    """(regular files, subfolders) directly in ``folder``, sorted; everything else is a counted skip.

    Dangling symlinks, symlinks leading out of ``root``, and special files
    (FIFOs, sockets, devices: reading them can block forever) become
    ``Skipped`` entries naming the entry. An unreadable folder is a
    ``DatasetFormatError`` naming it.
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise DatasetFormatError(folder, f"cannot list folder: {os_problem(err)}") from None
    files, folders = [], []
    for path in entries:
        ref = path.relative_to(root).as_posix()
        if utf8_problem(path.name):
            skipped.append(Skipped(printable(ref), "the name is not valid UTF-8 (its non-UTF-8 bytes are shown as "
                                                   "\\x escapes); rename it to read it"))
            continue
        reason = outside_reason(path, root)
        if reason is None:
            try:
                mode = path.stat().st_mode
            except OSError as err:
                reason = f"cannot stat: {os_problem(err)}"
            else:
                if stat.S_ISDIR(mode):
                    folders.append(path)
                    continue
                if stat.S_ISREG(mode):
                    files.append(path)
                    continue
                reason = "not a regular file (a pipe, socket or device)"
        skipped.append(Skipped(ref, reason))
    return files, folders


def first_skips(skipped: list[Skipped], n: int = 3) -> str:
    """The first few skips as 'ref: reason; ...' for one-line error messages."""
    if not skipped:
        return "none"
    return "; ".join(f"{s.ref}: {s.reason}" for s in skipped[:n])
