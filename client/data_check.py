"""Check a hospital's data folder before its node joins a federation (``fedemo data check``).

It reads the folder with exactly the loader the ClientApp will use and reports,
locally and without contacting anything: samples per emotion and per
demographic group, the node's train/test split, every file or line the loader
skipped (by name, with the reason), and where demographics are missing.
Problems that would stop the node (no readable samples, too few to split) make
the folder "not ready"; everything else is a warning the hospital may accept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import soundfile as sf

from client.loaders.base import (DEMOGRAPHIC_ATTRIBUTES, DatasetFormatError, EmotionData, Skipped, first_skips,
                                 os_problem)
from client.loaders.registry import DATASETS, TASK_DATASETS, load_dataset
from shared_models.taxonomy import EMOTIONS, UNKNOWN

MIN_PER_SPLIT = 1  # a node needs at least one train and one test sample (client.node_data)
SHOW = 10  # names listed per kind in the plain-words report (--json lists all)


@dataclass
class DataCheckReport:
    folder: str
    dataset: str
    task: str
    samples: int = 0
    per_emotion: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, int] = field(default_factory=dict)  # published split: train / test / none
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # attribute -> group -> samples
    missing_demographics: dict[str, list[str]] = field(default_factory=dict)  # attribute -> refs lacking it
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"ref", "reason"}
    not_provided: list[str] = field(default_factory=list)  # attributes no sample has (group reports: "unknown")
    problems: list[str] = field(default_factory=list)  # the node cannot join with this folder
    warnings: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ready": self.ready, **asdict(self)}


def default_task(dataset: str) -> str:
    return next(task for task, names in TASK_DATASETS.items() if dataset in names)


def check_data_dir(folder: str | Path, dataset: str, task: str | None = None, *,
                   decode_audio: bool = True) -> DataCheckReport:
    """Load ``folder`` as ``dataset`` for ``task`` and describe what a node would train on.

    For voice and fusion tasks every clip is also decoded (``decode_audio``),
    as training will: clips whose header is fine but whose samples are NaN,
    silent or too short are listed as skipped here, and a folder where no clip
    survives is not ready. Problems name the file and what is wrong; nothing
    in the folder makes this raise.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset format {dataset!r}; choose one of {', '.join(DATASETS)}")
    task = task or default_task(dataset)
    report = DataCheckReport(folder=str(Path(folder).resolve()), dataset=dataset, task=task)
    try:
        data = load_dataset(dataset, folder, task)
    except (DatasetFormatError, ValueError) as err:  # missing folder/file, every row bad, task mismatch
        report.problems.append(str(err))
        return report
    except OSError as err:  # a backstop: the loaders name what they cannot read themselves
        report.problems.append(f"{err.filename or folder}: cannot read ({os_problem(err)})")
        return report
    if decode_audio and task in ("voice", "fusion"):
        data = _decode_all(data, report)
        if data is None:
            return report
    _describe(data, report)
    return report


def _decode_all(data: EmotionData, report: DataCheckReport) -> EmotionData | None:
    """Decode every clip as training will; failures join the loader's skips. None if no clip decodes."""
    from client.loaders.audio_files import LONG_CLIP_SECONDS, decode_clip

    keep, failed, long_clips = [], [], []
    for row in range(len(data)):
        path = data.path_of(row)
        try:
            decode_clip(path)
        except DatasetFormatError as err:
            failed.append(Skipped(str(data.refs[row]), err.problem))
            continue
        keep.append(row)
        try:
            if sf.info(str(path)).duration > LONG_CLIP_SECONDS:
                long_clips.append(str(data.refs[row]))
        except Exception:  # decoded a moment ago; a vanished header is not this check's concern
            pass
    data.skipped = list(data.skipped) + failed  # the loader's skips, then what decoding found
    if long_clips:
        report.warnings.append(f"{len(long_clips)} clip(s) longer than {LONG_CLIP_SECONDS:g} s; only their "
                               f"centre 3 s is used (first: {', '.join(long_clips[:3])})")
    if not keep:
        report.skipped = [{"ref": s.ref, "reason": s.reason} for s in data.skipped]
        report.problems.append(f"{data.root}: no clip can be decoded ({len(failed)} of {len(data)} indexed clips "
                               f"failed, e.g. {first_skips(failed)})")
        return None
    return data.subset(keep) if failed else data


def _describe(data: EmotionData, report: DataCheckReport) -> None:
    n = len(data)
    report.samples = n
    counts = np.bincount(data.labels, minlength=len(EMOTIONS))
    report.per_emotion = {name: int(c) for name, c in zip(EMOTIONS, counts)}
    split = Counter(str(s) or "none" for s in data.published_split)
    report.per_split = dict(sorted(split.items()))
    report.skipped = [{"ref": s.ref, "reason": s.reason} for s in data.skipped]

    for attr in DEMOGRAPHIC_ATTRIBUTES:
        values = data.demographics[attr].astype(str)
        report.groups[attr] = dict(sorted(Counter(values).items()))
        missing = values == UNKNOWN
        if missing.all():
            report.not_provided.append(attr)
        elif missing.any():
            report.missing_demographics[attr] = [str(r) for r in data.refs[missing]]
            report.warnings.append(f"{int(missing.sum())} of {n} samples lack {attr} "
                                   f"(first: {', '.join(report.missing_demographics[attr][:3])})")

    if report.skipped:
        report.warnings.append(f"{len(report.skipped)} files or lines were skipped as unreadable or malformed "
                               "(listed below); the node trains without them")
    absent = [name for name, c in report.per_emotion.items() if c == 0]
    if absent:
        report.warnings.append(f"no samples of {', '.join(absent)}")
    has_train, has_test = split.get("train", 0), split.get("test", 0)
    if not (has_train and has_test) and n < 2 * MIN_PER_SPLIT:
        report.problems.append(f"only {n} usable sample(s): a node needs at least one to train and one to test on")


def describe(report: DataCheckReport) -> str:
    """The report in plain words."""
    lines = [f"{'READY' if report.ready else 'NOT READY'}: {report.folder} as {DATASETS[report.dataset].title} "
             f"for the {report.task} task (checked locally; nothing was sent anywhere)"]
    for problem in report.problems:
        lines.append(f"  problem: {problem}")
    if report.samples:
        lines.append(f"  {report.samples} usable samples; published split: "
                     + ", ".join(f"{k} {v}" for k, v in report.per_split.items()))
        lines.append("  per emotion: " + ", ".join(f"{k} {v}" for k, v in report.per_emotion.items()))
        for attr, groups in report.groups.items():
            if attr in report.not_provided:
                lines.append(f"  per {attr}: not provided (group-wise reports will count these samples as unknown)")
            else:
                lines.append(f"  per {attr}: " + ", ".join(f"{k} {v}" for k, v in groups.items()))
    for warning in report.warnings:
        lines.append(f"  warning: {warning}")
    for s in report.skipped[:SHOW]:
        lines.append(f"  skipped {s['ref']}: {s['reason']}")
    if len(report.skipped) > SHOW:
        lines.append(f"  ... and {len(report.skipped) - SHOW} more skipped (--json lists all)")
    return "\n".join(lines)
