"""A stop request that the round loop honours within a poll interval (clean Ctrl-C).

The simulation's main thread installs a handler that only sets this flag; the round loop checks it while
waiting for replies and the ServerApp writes an interrupted summary with how to resume. A second signal
stops the node processes, a third quits at once, never with a traceback. A full disk (``disk_full``) ends
the run the same way.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from typing import Callable

_STOP = threading.Event()
_REASON: list[str] = []


def request_stop(reason: str) -> None:
    _REASON[:] = [reason]
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def stop_reason() -> str:
    return _REASON[0] if _REASON else ""


def reset() -> None:
    """Forget an earlier request (a new run in the same process)."""
    _STOP.clear()
    _REASON.clear()


def install_handlers(stop_nodes: Callable[[], bool] | None = None) -> dict[int, object]:
    """Catch SIGINT/SIGTERM for a run; returns the old handlers (``restore_handlers``).

    The first asks the coordinator to stop after the last checkpointed round; it then writes the
    summary and report. The second also stops the node processes at once (``stop_nodes``, which says
    whether it could): a node in the middle of a long round no longer holds the end up. A third (or a
    second that could stop no node) ends the process at once, with
    one line (the checkpoint on disk is whole: it is replaced atomically). None prints a traceback.
    """
    previous: dict[int, object] = {}
    received: list[int] = []

    def handler(signum, _frame) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            request_stop(name)
            _say(f"{name}: stopping after the last completed round, then writing the summary and report "
                 "(again: stop the nodes at once)")
        elif len(received) == 2 and stop_nodes is not None and stop_nodes():
            _say(f"{name} again: stopped the nodes; writing the summary (again: quit at once)")
        else:
            _say(f"{name} again: quitting at once; the last checkpoint is kept (fedemo simulate --resume RUN_DIR)")
            os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def _say(line: str) -> None:
    try:
        sys.stderr.write(f"[fedemo] {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed terminal: the stop goes on without the line
        pass


def restore_handlers(previous: dict[int, object]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


# A write that fails for want of space: no space left, a disk quota, a file-size limit.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFull(RuntimeError):
    """The run could not write its files (disk full); the message says how far it got and how to go on."""


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write that failed for want of space (ends the run like an interruption)."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS
