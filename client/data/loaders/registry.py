"""Dataset name -> loader, so run configs and node configs can name a format (the names, titles and tasks:
shared_models/datasets.py).

Imports are lazy: a hospital with only voice data never needs the image stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from client.data.consent import load_consented
from client.data.loaders.base import DatasetFormatError, EmotionData, first_skips, os_problem, printable, utf8_problem
from shared_models.datasets import DATASETS, TASK_DATASETS, same_names

__all__ = ["LOADERS", "check_task_dataset", "load_dataset"]


def _fer2013(root: Path, task: str) -> EmotionData:
    from client.data.loaders.fer2013 import load_fer2013

    return load_fer2013(root)


def _rafdb(root: Path, task: str) -> EmotionData:
    from client.data.loaders.rafdb import load_rafdb

    return load_rafdb(root)


def _cremad(root: Path, task: str) -> EmotionData:
    from client.data.loaders.cremad import load_cremad

    return load_cremad(root, with_faces=(task == "fusion"))


def _ravdess(root: Path, task: str) -> EmotionData:
    from client.data.loaders.ravdess import load_ravdess

    return load_ravdess(root)


# dataset name (shared_models/datasets.py's table, which also says which tasks each serves) -> its reader
LOADERS: dict[str, Callable[[Path, str], EmotionData]] = {
    "fer2013": _fer2013, "rafdb": _rafdb, "cremad": _cremad, "ravdess": _ravdess,
}
same_names("client/data/loaders/registry.py", LOADERS, DATASETS)


def check_task_dataset(task: str, dataset: str) -> None:
    """Refuse a task/dataset pair that cannot work, before anything is loaded."""
    if task not in TASK_DATASETS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_DATASETS)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset not in TASK_DATASETS[task]:
        raise ValueError(
            f"dataset {dataset!r} cannot serve task {task!r}; it needs one of {', '.join(TASK_DATASETS[task])}"
        )


def load_dataset(dataset: str, root: str | Path, task: str, *, consent_default: str = "exclude",
                 consent_manifest: str | Path | None = None) -> EmotionData:
    """Load a dataset folder in its published format, checked for the task, with its consent manifest applied.

    The manifest (``consent.csv`` in the folder, or ``consent_manifest``) removes every record it does not
    allow before any caller sees the rows (``client.data.consent``); ``consent_default`` decides for records
    it does not name. Without a manifest every record is kept.
    """
    check_task_dataset(task, dataset)
    root = Path(root)
    not_text = utf8_problem(root.absolute())
    if not_text:  # refused before anything is read: every record of the run would fail to name it later
        raise DatasetFormatError(printable(root), f"dataset folder: {not_text}")
    try:
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DatasetFormatError(root, f"dataset folder for {DATASETS[dataset].title} {what}")
        data = LOADERS[dataset](root, task)
    except OSError as err:  # a backstop: loaders turn the OSErrors they expect into DatasetFormatError themselves
        raise DatasetFormatError(err.filename or root, f"cannot read: {os_problem(err)}") from None
    if len(data) == 0:
        raise DatasetFormatError(root, f"no usable samples ({len(data.skipped)} skipped; first: {first_skips(data.skipped)})")
    held = len(data)
    data = load_consented(data, root, consent_default, consent_manifest)
    if len(data) == 0:
        raise DatasetFormatError(root, f"no record may be used: the consent manifest {data.consent.manifest} excludes "
                                       f"all {held} ({data.consent.refused} refused, {data.consent.missing} not named, "
                                       f"consent-default {data.consent.policy})")
    return data


def every_record(dataset: str, root: str | Path, task: str | None = None) -> EmotionData:
    """Every record the folder holds, before consent: only to name records (a consent manifest, ids to withdraw),
    never to train, evaluate or count on (``load_dataset`` is the one way to read data for that)."""
    task = task or next(t for t, names in TASK_DATASETS.items() if dataset in names)
    check_task_dataset(task, dataset)
    return globals()[f"_{dataset}"](Path(root), task)
