"""One way to replace a file on disk so that a crash leaves the old content or the new, never half.

Ledgers, signed reports, run records and credentials all go through here:
write a temporary file beside the target, fsync it, rename it over the
target, fsync the folder (so the rename itself survives a power cut).
Secrets made once (keys) are created instead, never replacing an existing
file: ``atomic_create_bytes``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; ``mode`` (e.g. 0o600) is set before the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(tmp, flags, 0o666 if mode is None else mode)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_create_bytes(path: str | Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` holding ``data`` in one step; ``FileExistsError`` if it exists, which stays untouched.

    For secrets made once (signing keys, node key pairs): a crash leaves no
    half-written key behind, and two processes racing to create the same key
    cannot both win, so neither overwrites a key the other already uses. The
    complete temporary file is hard-linked to the target, which fails when the
    target exists; where the filesystem has no hard links, an exclusive create
    keeps the never-overwrite promise without the all-or-nothing one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)  # left by a crashed process that had our pid
    try:
        _write_synced(tmp, data, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:  # the one OSError that answers the question: someone else's key is there
            raise
        except OSError:  # no hard links here (some network or FAT filesystems)
            _write_synced(path, data, mode)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    """Exclusively create ``path`` with ``mode`` (not filtered by the umask) and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask; before the secret is written
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_json(path: str | Path, payload: Any, *, mode: int | None = None) -> None:
    """Pretty, key-sorted JSON with a final newline (diffable, and stable for signatures)."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", mode=mode)


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)

