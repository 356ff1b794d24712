"""Check a hospital's data folder before its node joins a federation (``fedemo data check``).

Reads the folder with exactly the ClientApp's loader and reports locally: samples per emotion and group,
the train/test split, every skipped file or line with its reason, missing demographics, and flagged
(kept but suspect) samples. What would stop the node makes the folder "not ready"; the rest are warnings.
A simulation runs the same check with its partition before the engine starts (every node must get
``min-partition-size`` samples; a sample of clips is decoded).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import soundfile as sf

from client.data.loaders.base import (DEMOGRAPHIC_ATTRIBUTES, DatasetFormatError, EmotionData, Skipped, first_skips,
                                 os_problem, printable)
from client.data.loaders.registry import load_dataset
from client.data.consent_check import check_manifest, coverage_lines, describe_coverage
from client.data.partitioning import PartitionError, PartitionSpec, partition
from shared_models.datasets import DATASETS, TASK_DATASETS
from shared_models.taxonomy import EMOTIONS, UNKNOWN

MIN_PER_SPLIT = 1  # a node needs at least one train and one test sample (client.data.node_data)
SHOW = 10  # names listed per kind in the plain-words report (--json lists all)
FLAG_RESAMPLED = "clip at a rate rounded for resampling"


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
    flagged: dict[str, list[str]] = field(default_factory=dict)  # kept but suspect, by kind -> refs
    decoded: int | None = None  # clips decoded by the check (None: not a voice check, or decoding off)
    indexed_clips: int | None = None  # clips the loader indexed (decoded < indexed_clips: a sample was decoded)
    consent: dict = field(default_factory=dict)  # the consent manifest's coverage (client/data/consent_check.py)
    problems: list[str] = field(default_factory=list)  # the node cannot join with this folder
    warnings: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ready": self.ready, **asdict(self)}


def default_task(dataset: str) -> str:
    return next(task for task, names in TASK_DATASETS.items() if dataset in names)


def check_data_dir(folder: str | Path, dataset: str, task: str | None = None, *, decode_audio: bool = True,
                   decode_limit: int | None = None, partition_spec: PartitionSpec | None = None,
                   consent_default: str = "exclude", consent_manifest: str | Path | None = None) -> DataCheckReport:
    """Load ``folder`` as ``dataset`` for ``task`` and describe what a node would train on.

    For voice and fusion tasks clips are also decoded (``decode_audio``), as
    training will: clips whose header is fine but whose samples are NaN, silent
    or too short are listed as skipped here, and a folder where no clip survives
    is not ready. ``decode_limit`` decodes an evenly spread sample of that many
    clips instead of all (then, if none of them decodes, the rest until one
    does, so "no clip can be decoded" is still exact). With ``partition_spec``
    the folder must also split into that many simulated nodes of at least
    ``min_size`` samples each, by the partitioner the nodes will run. Problems
    name the file and what is wrong; nothing in the folder makes this raise.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset format {dataset!r}; choose one of {', '.join(DATASETS)}")
    task = task or default_task(dataset)
    report = DataCheckReport(folder=printable(Path(folder).absolute()), dataset=dataset, task=task)
    if not check_manifest(folder, consent_manifest, report):  # every bad line named, before the folder is read
        return report
    try:
        data = load_dataset(dataset, folder, task, consent_default=consent_default, consent_manifest=consent_manifest)
    except (DatasetFormatError, ValueError) as err:  # missing folder/file, every row bad, task mismatch
        report.problems.append(str(err))
        return report
    except OSError as err:  # a backstop: the loaders name what they cannot read themselves
        report.problems.append(f"{err.filename or folder}: cannot read ({os_problem(err)})")
        return report
    indexed = data
    if task in ("voice", "fusion"):
        _clip_headers(data, report)
        if decode_audio:
            data = _decode_clips(data, report, decode_limit)
            if data is None:
                return report
    describe_coverage(data.consent, report)
    _describe(data, report)
    if partition_spec is not None:
        _check_partition(indexed, partition_spec, report)
    return report


def _clip_headers(data: EmotionData, report: DataCheckReport) -> None:
    """Notes from each clip's header: long clips (centre only used), rates resampled by a rounded ratio."""
    from client.data.loaders.audio_files import LONG_CLIP_SECONDS
    from shared_models.audio_features import SAMPLE_RATE, resampling_note

    long_clips, rounded, notes = [], [], {}
    for row in range(len(data)):
        try:
            info = sf.info(str(data.path_of(row)))
        except Exception:  # indexed a moment ago; decoding (or training) names a vanished clip
            continue
        if info.duration > LONG_CLIP_SECONDS:
            long_clips.append(str(data.refs[row]))
        note = resampling_note(info.samplerate, SAMPLE_RATE)
        if note:
            rounded.append(str(data.refs[row]))
            notes.setdefault(info.samplerate, note)
    if long_clips:
        report.warnings.append(f"{len(long_clips)} clip(s) longer than {LONG_CLIP_SECONDS:g} s; only their "
                               f"centre 3 s is used (first: {', '.join(long_clips[:3])})")
    if rounded:
        data.flagged = {**data.flagged, FLAG_RESAMPLED: rounded}
        report.warnings.append(f"{len(rounded)} clip(s) at an unusual sample rate (first: {', '.join(rounded[:3])}): "
                               + "; ".join(notes[rate] for rate in sorted(notes)[:3]))


def _decode_clips(data: EmotionData, report: DataCheckReport, limit: int | None) -> EmotionData | None:
    """Decode clips as training will; failures join the loader's skips. None if no clip decodes.

    Every clip, or with ``limit`` an evenly spread sample of that many (and,
    if none of those decodes, the others until one does).
    """
    from client.data.loaders.audio_files import decode_clip

    n = len(data)
    if limit is None or limit >= n:
        first, rest = list(range(n)), []
    else:
        first = sorted({int(i) for i in np.linspace(0, n - 1, max(limit, 1)).round()})
        chosen = set(first)
        rest = [i for i in range(n) if i not in chosen]
    keep, failed = [], []

    def decode(row: int) -> None:
        try:
            decode_clip(data.path_of(row))
        except DatasetFormatError as err:
            failed.append(Skipped(str(data.refs[row]), err.problem))
            return
        keep.append(row)

    for row in first:
        decode(row)
    tried = len(first)
    for row in rest:
        if keep:
            break
        decode(row)
        tried += 1
    report.decoded, report.indexed_clips = tried, n
    data.skipped = list(data.skipped) + failed  # the loader's skips, then what decoding found
    if not keep:
        report.skipped = [{"ref": s.ref, "reason": s.reason} for s in data.skipped]
        report.problems.append(f"{printable(data.root)}: no clip can be decoded ({len(failed)} of {n} indexed "
                               f"clips failed, e.g. {first_skips(failed)})")
        return None
    if tried < n and failed:
        report.warnings.append(f"{len(failed)} of {tried} clips decoded as a sample failed (listed below); nodes "
                               f"skip such clips; `fedemo data check` without a limit decodes all {n}")
    if not failed:
        return data
    failed_refs = {s.ref for s in failed}
    return data.subset([row for row in range(n) if str(data.refs[row]) not in failed_refs])


def _check_partition(data: EmotionData, spec: PartitionSpec, report: DataCheckReport) -> None:
    """Not ready unless ``spec``'s partitioner gives every simulated node at least ``min_size`` samples.

    Runs on the indexed rows, exactly as each simulated node partitions them
    (``client.data.node_data``), so a split that would fail inside the engine fails here.
    """
    need = spec.num_partitions * max(spec.min_size, 1)
    if len(data) < need:
        report.problems.append(f"{printable(data.root)}: {len(data)} usable sample(s), fewer than the {need} that "
                               f"{spec.num_partitions} node(s) x min-partition-size {spec.min_size} need; use fewer "
                               "nodes, a smaller min-partition-size or more data")
        return
    try:
        partition(data, spec)
    except PartitionError as err:
        report.problems.append(f"{printable(data.root)}: cannot split into {spec.num_partitions} node(s) "
                               f"({spec.method}): {err}")


def _describe(data: EmotionData, report: DataCheckReport) -> None:
    n = len(data)
    report.samples = n
    counts = np.bincount(data.labels, minlength=len(EMOTIONS))
    report.per_emotion = {name: int(c) for name, c in zip(EMOTIONS, counts)}
    split = Counter(str(s) or "none" for s in data.published_split)
    report.per_split = dict(sorted(split.items()))
    report.skipped = [{"ref": s.ref, "reason": s.reason} for s in data.skipped]
    report.flagged = {kind: list(refs) for kind, refs in data.flagged.items() if refs}
    explained: dict[str, str] = {}
    if report.flagged and data.faces is not None:  # faces only: a voice node needs no image stack
        from client.data.loaders.images import FLAG_EXPLAINED as explained
    for kind, refs in report.flagged.items():
        if kind in explained:
            report.warnings.append(f"{kind}: {len(refs)} kept but suspect, {explained[kind]} "
                                   f"(first: {', '.join(refs[:3])})")

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
    lines += coverage_lines(report.consent)
    if report.flagged:
        lines.append("  flagged (kept): " + ", ".join(f"{kind} {len(refs)}" for kind, refs in report.flagged.items()))
    if report.decoded is not None and report.decoded < (report.indexed_clips or 0):
        lines.append(f"  decoded {report.decoded} of {report.indexed_clips} clips as a sample")
    for warning in report.warnings:
        lines.append(f"  warning: {warning}")
    for s in report.skipped[:SHOW]:
        lines.append(f"  skipped {s['ref']}: {s['reason']}")
    if len(report.skipped) > SHOW:
        lines.append(f"  ... and {len(report.skipped) - SHOW} more skipped (--json lists all)")
    return "\n".join(lines)
