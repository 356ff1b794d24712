"""One way to replace a file on disk so that a crash leaves the old content or the new, never half.

Ledgers, signed reports, run records and credentials all go through here:
write a temporary file beside the target, fsync it, rename it over the
target, fsync the folder (so the rename itself survives a power cut).
Secrets made once (keys) are created instead, never replacing an existing
file: ``atomic_create_bytes``.
"""

from __future__ import annotations

import json
import math
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
    """Pretty, key-sorted, strict JSON with a final newline (diffable, and stable for signatures).

    Strict: a NaN or infinity is refused (``ValueError`` naming the file and the value's place), never
    written as ``NaN``/``Infinity``, which no standard JSON reader accepts. Writers of figures that may
    be non-finite pass them through :func:`finite_or_null` first.
    """
    atomic_write_text(path, strict_json(payload, indent=2, sort_keys=True, where=str(path)) + "\n", mode=mode)


def strict_json(payload: Any, *, where: str = "", **dumps_args: Any) -> str:
    """``json.dumps(payload, allow_nan=False)``, whose error names the first non-finite value's place."""
    try:
        return json.dumps(payload, allow_nan=False, **dumps_args)
    except ValueError:
        _, replaced = finite_or_null(payload)
        if not replaced:
            raise
        place, value = next(iter(replaced.items()))
        raise ValueError(f"{where or 'JSON'}: {place} is {value}, which JSON cannot hold "
                         f"({len(replaced)} non-finite value(s))") from None


def finite_or_null(payload: Any, _place: str = "") -> tuple[Any, dict[str, str]]:
    """``payload`` with every NaN/infinite float replaced by ``None``, and {place: the value it was}.

    Places are dotted keys and list indices (``train.clients.0.train_loss``), so a record can say
    which figures were not finite and why they read ``null``.
    """
    if isinstance(payload, float) and not math.isfinite(payload):
        return None, {_place or "value": _nonfinite_name(payload)}
    if isinstance(payload, dict):
        out, replaced = {}, {}
        for key, value in payload.items():
            out[key], sub = finite_or_null(value, f"{_place}.{key}" if _place else str(key))
            replaced.update(sub)
        return out, replaced
    if isinstance(payload, (list, tuple)):
        items, replaced = [], {}
        for i, value in enumerate(payload):
            item, sub = finite_or_null(value, f"{_place}.{i}" if _place else str(i))
            items.append(item)
            replaced.update(sub)
        return items, replaced
    return payload, {}


def _nonfinite_name(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files (``.NAME.PID.tmp``) that a killed writer left in ``folder``; returns them.

    :func:`atomic_write_bytes` removes its temporary file when the write fails, but a process killed
    mid-write (SIGKILL, a power cut) cannot: its ``.checkpoint.npz.1234.tmp`` would stay for good. A
    file is stale when the process its name ends with is gone (or is this process, which is not writing
    it now: call this before the writes start).
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        pid = path.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


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

