"""A stop request that the round loop honours within a poll interval (clean Ctrl-C).

``fedemo simulate`` runs the ServerApp in a thread of its own process, where
no signal handler can be installed; the simulation's main thread installs one
(``install_handlers``) that only sets this flag. The round loop
(server/rounds.py) checks it while it waits for replies, stops, and the
ServerApp writes an interrupted summary with how to resume. A second signal
falls through to the default handler: a hard stop for an impatient user.
"""

from __future__ import annotations

import signal
import threading

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


def install_handlers() -> dict[int, object]:
    """Make the first SIGINT/SIGTERM a stop request and the second the default; returns the old handlers."""
    previous: dict[int, object] = {}

    def handler(signum, _frame) -> None:
        for sig, old in previous.items():  # the next signal acts as it did before us
            signal.signal(sig, old)
        request_stop(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def restore_handlers(previous: dict[int, object]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
