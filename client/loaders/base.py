"""The one container every dataset loader returns, and the errors loaders raise.

Faces are small (48x48 bytes), so face loaders decode them up front into
``faces``. Audio is large, so voice loaders only index clips (labels, speaker,
demographics, file) and decode waveforms on demand with ``read_waveform`` for
the rows a client actually uses. Either way the metadata arrays are aligned
row by row, so partitioners and bias reports never need to touch raw inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
        )

    def path_of(self, row: int) -> Path:
        """The file a row was read from (for voice clips and image files)."""
        return self.root / str(self.refs[row]).split(":")[0]
