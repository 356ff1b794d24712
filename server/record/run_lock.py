"""One coordinator per run folder: a second process on the same run (two `--resume` at once) is refused.

Two resumes of one run both used to succeed and interleave their rounds
(0, 1, 2, 3, 3, 4, 4, ...) into a report that verified. The coordinator now
holds an exclusive ``flock`` on ``<run folder>/run.lock`` from the moment it
opens the folder until the run ends; the kernel drops it if the process dies,
so a killed run can be resumed at once. The lock file names the holder's pid
for the refusal's one line.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "run.lock"
_held: dict[Path, IO[str]] = {}


class RunFolderBusy(FileExistsError):
    """Another process holds the run folder (a FileExistsError: `fedemo` answers it in one line, exit 2)."""


def hold_run_folder(run_dir: str | Path) -> None:
    """Take the run folder for this process until :func:`release_run_folders`; raises RunFolderBusy."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    handle = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderBusy(f"{run_dir} is in use by another FedEmo process (pid {holder}): wait for it to end "
                            "or stop it, then resume") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held[run_dir] = handle


def release_run_folders() -> None:
    """Give back every run folder this process holds (the end of a run, however it ended)."""
    for run_dir in list(_held):
        _release(run_dir)


def _release(run_dir: Path) -> None:
    handle = _held.pop(run_dir)
    handle.seek(0)
    handle.truncate()  # an empty lock file: nobody holds the folder
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()


def check_run_folder_free(run_dir: str | Path) -> None:
    """Refuse now, before any engine starts, when another process holds the run folder."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    hold_run_folder(run_dir)
    _release(run_dir)
