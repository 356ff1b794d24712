"""The coordinator's console and its ``run.log``: our lines, one progress line per round, one final summary.

By default the console shows FedEmo's own lines (settings, one ``[fedemo] round n/N`` line per round that fits
100 columns, with a ``rich`` progress bar on a terminal and plain text elsewhere, warnings, errors) and hides
Flower's INFO chatter unless verbose (``--verbose`` or ``FEDEMO_VERBOSE=1``); this is logging configuration
only, Flower is untouched. ``run.log`` gets the same lines with timestamps, each round's full figures and the
coordinator's Python warnings; lines logged before the run folder exists are written first.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from server.rounds.final_summary import (final_summary, majority_rate,  # noqa: F401 (console.final_summary)
                                         noised_accuracy_interval)
from shared_models import quiet_warnings

VERBOSE_ENV = "FEDEMO_VERBOSE"  # "1": show Flower's own INFO lines too
STARTED_ENV = "FEDEMO_STARTED"  # epoch seconds when the command started (set by `fedemo simulate`)
PROGRESS = "fedemo_progress"  # LogRecord attribute of a round line: (round, rounds)
RUN_LOG = "run.log"
BAR_WIDTH = 8
DETAIL = "fedemo_detail"  # LogRecord attribute of a run.log-only line (shown on the console with --verbose)
CONSOLE_COLUMNS = 100  # a round line, with its progress bar, fits an ordinary terminal
ROUND_TEXT_WIDTH = CONSOLE_COLUMNS - BAR_WIDTH - 1

# Said once per DP run, in place of Opacus's "Secure RNG turned off" (shared_models/quiet_warnings.py).
DP_RANDOMNESS = ("DP-SGD: every node draws its sampling masks and Gaussian noise from a generator seeded from the "
                 "operating system's secure random source, never from the run's seed (Opacus's secure_mode is off; "
                 "docs/privacy.md)")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FLWR_DIR = ""


class VerboseFlag(argparse.Action):
    """``--verbose``: sets FEDEMO_VERBOSE for the coordinator (in this process, or a child it starts)."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.setdefault("help", "also show Flower's own log lines (sampling notes, banners, final dumps)")
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[VERBOSE_ENV] = "1"
        setattr(namespace, self.dest, True)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


# --- the one wall-clock figure -------------------------------------------------------------------


def mark_start(when: float | None = None) -> None:
    """The command starts a run now (``fedemo simulate``, ``run_simulation``): its wall clock counts from here.

    The CLI reaches this a fraction of a second after it starts (torch and
    Flower load later, inside the run), so the figure is the time the user
    waits; a further run in the same process (``fedemo compare``, a
    benchmark) counts from its own start.
    """
    os.environ[STARTED_ENV] = repr(float(time.time() if when is None else when))


def run_started() -> float:
    """When the user's command started: FEDEMO_STARTED, else this process's start (``flwr run``'s app process)."""
    marked = _marked_start()
    return process_started() if marked is None else marked


def started_by_fedemo() -> bool:
    """Whether a fedemo command in this process marked the start (it then says a failed run's reason itself)."""
    return _marked_start() is not None


def _marked_start() -> float | None:
    """FEDEMO_STARTED, if this process set it: a value older than the process was inherited (a shell that exported
    it, or ``flwr run`` started from a process that ran a simulation) and says nothing about this run."""
    try:
        marked = float(os.environ[STARTED_ENV])
    except (KeyError, ValueError):
        return None
    return marked if marked >= process_started() - 1.0 else None


def process_started() -> float:
    """This process's start time (Linux /proc; elsewhere the time this module was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def clock(seconds: float) -> str:
    """0:26, 12:05, 1:02:03."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RoundClock:
    """Elapsed time and ETA after each round, from the rounds this process has seen complete."""

    def __init__(self, num_rounds: int):
        self.num_rounds = num_rounds
        self.created = time.time()
        self.base: float | None = None  # time of the reference point ...
        self.base_round = 0  # ... and the round completed there

    def tick(self, server_round: int) -> str:
        now = time.time()
        if self.base is None:
            if server_round == 0:  # the initial evaluation: rounds are timed from its end
                self.base, self.base_round = now, 0
                return f"elapsed {clock(now - run_started())}"
            self.base, self.base_round = self.created, server_round - 1  # a resumed run's first round
        done = server_round - self.base_round
        eta = (now - self.base) / done * max(0, self.num_rounds - server_round) if done > 0 else None
        return f"elapsed {clock(now - run_started())}" + (f", ETA {clock(eta)}" if eta is not None else "")


def progress(server_round: int, num_rounds: int) -> dict[str, Any]:
    """``extra=`` of a round line: the console draws a bar for it on a terminal."""
    return {PROGRESS: (server_round, num_rounds)}


def detail() -> dict[str, Any]:
    """``extra=`` of a line for run.log only (and the console with ``--verbose``): a round's full figures."""
    return {DETAIL: True}


def fit(parts: list[str], optional: list[str], width: int = ROUND_TEXT_WIDTH, sep: str = "  ") -> str:
    """``parts`` joined, then each of ``optional`` (in order of importance) that still fits in ``width``.

    The last of ``parts`` (the clock) stays last. Whatever is left out is in the round's detail line.
    """
    head, tail = parts[:-1], parts[-1:]
    for item in optional:
        if len(sep.join(head + [item] + tail)) <= width:
            head.append(item)
    return sep.join(head + tail)


def round_line(server_round: int, num_rounds: int, entry: dict[str, Any], epsilons: dict[str, float],
               clients: dict[str, int], clock_text: str) -> str:
    """The round's console line: accuracy, macro-F1, loss, the largest epsilon, who trained, the clock.

    At most ``ROUND_TEXT_WIDTH`` characters, so with the terminal's progress
    bar the line fits 100 columns; the full figures are in the detail line.
    """
    loss = entry.get("loss")
    parts = [f"[fedemo] round {server_round}/{num_rounds}",
             f"acc {entry['accuracy']:.3f}" + ("~" if entry.get("groups_dp") else ""),  # ~: noised counts
             f"F1 {entry['macro_f1']:.3f}", "loss " + ("n/a" if loss is None else f"{loss:.4g}")]
    names = {"training": "eps", "client-level": "client eps", "evaluation": "eval eps"}
    spent = [f"{names[k]} {v:.2f}" for k, v in epsilons.items() if v is not None]
    parts += spent[:1] + [clock_text]  # the first epsilon always shows (training's, where DP-SGD runs)
    optional = spent[1:]
    trained = f"{clients.get('trained', 0)} trained"
    trained += "".join(f", {clients[k]} {k}" for k in ("rejected", "failed") if clients.get(k))
    optional.append(trained)
    if entry.get("unchanged"):
        optional.append("model unchanged")
    return fit(parts, optional)


# --- logging configuration -----------------------------------------------------------------------


def _is_flowers(record: logging.LogRecord) -> bool:
    """A record Flower's own code logged (ours go through the same ``flwr`` logger)."""
    global _FLWR_DIR
    if not _FLWR_DIR:
        import flwr

        _FLWR_DIR = os.path.dirname(os.path.abspath(flwr.__file__)) + os.sep
    return os.path.abspath(record.pathname).startswith(_FLWR_DIR)


def _quiet(record: logging.LogRecord) -> bool:
    return verbose() or record.levelno >= logging.WARNING or not _is_flowers(record)


def _plain(record: logging.LogRecord) -> str:
    text = _ANSI.sub("", record.getMessage())
    return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


class ConsoleHandler(logging.Handler):
    """Writes where Flower's console handler writes (it follows Flower's own redirections)."""

    def __init__(self, flower_handler: logging.StreamHandler):
        super().__init__(logging.INFO)
        self.flower_handler = flower_handler
        self.addFilter(_quiet)
        self.addFilter(lambda record: verbose() or not getattr(record, DETAIL, False))
        self._rich: dict[int, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream: TextIO = self.flower_handler.stream or sys.stderr
            if _is_terminal(stream):
                self._emit_rich(stream, record)
            else:
                stream.write(_plain(record) + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def _emit_rich(self, stream: TextIO, record: logging.LogRecord) -> None:
        from rich.console import Console
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        console = self._rich.get(id(stream))
        if console is None or console.file is not stream:
            console = self._rich[id(stream)] = Console(file=stream, highlight=False)
        style = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}.get(
            record.levelno, "dim" if _is_flowers(record) else "")
        text = Text(_plain(record), style=style)
        done = getattr(record, PROGRESS, None)
        if done is not None:  # rich's own bar, drawn inline before the line (no padding: the terminal wraps it)
            bar = ProgressBar(total=max(done[1], 1), completed=done[0], width=BAR_WIDTH)
            segments = console.render(bar, console.options.update(width=BAR_WIDTH))
            text = Text.assemble(*((seg.text, seg.style) for seg in segments if seg.text.strip("\n")), " ", text)
        console.print(text, soft_wrap=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class _PlainFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class _Buffer(logging.Handler):
    """Records logged before the run folder exists, for run.log."""

    LIMIT = 5000

    def __init__(self):
        super().__init__(logging.INFO)
        self.addFilter(_quiet)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append(record)


_state: dict[str, Any] = {"console": None, "buffer": None, "file": None}


def begin() -> None:
    """Take over the ``flwr`` logger's console output for FedEmo (idempotent; once per process is enough).

    Also: the known-harmless warnings are filtered (shared_models/quiet_warnings.py),
    the ``flwr`` logger stops propagating to the root logger (Opacus installs
    a root handler on import: without this every line prints twice), and
    lines are kept for the next run's ``run.log``.
    """
    from flwr.supercore.logger import FLOWER_LOGGER, console_handler

    FLOWER_LOGGER.propagate = False
    if _state["console"] is None:
        _hook_warnings()
        quiet_warnings.install()  # after our hook: a silenced warning reaches neither the console nor run.log
        handler = ConsoleHandler(console_handler)
        FLOWER_LOGGER.removeHandler(console_handler)
        FLOWER_LOGGER.addHandler(handler)
        _state["console"] = handler
    if _state["buffer"] is None and _state["file"] is None:
        _state["buffer"] = _Buffer()
        FLOWER_LOGGER.addHandler(_state["buffer"])


def attach_run_log(run_dir: Path) -> Path:
    """Start ``run_dir/run.log`` (appended to on resume) with the lines kept since ``begin``."""
    from flwr.supercore.logger import FLOWER_LOGGER

    begin()
    end_run_log()
    path = Path(run_dir) / RUN_LOG
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(_PlainFormatter())
    handler.addFilter(_quiet)
    buffer = _state["buffer"]
    if buffer is not None:
        FLOWER_LOGGER.removeHandler(buffer)
        for record in buffer.records:
            handler.handle(record)
        _state["buffer"] = None
    FLOWER_LOGGER.addHandler(handler)
    _state["file"] = handler
    return path


def end_run_log(error: BaseException | None = None) -> None:
    """Close run.log; an exception ending the run is written there first (the console gets Flower's report)."""
    from flwr.supercore.logger import FLOWER_LOGGER

    handler = _state["file"]
    if handler is None:
        return
    if error is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
        handler.handle(logging.LogRecord("flwr", logging.ERROR, __file__, 0, "The run stopped: %s: %s",
                                         (type(error).__name__, error), None))
    FLOWER_LOGGER.removeHandler(handler)
    handler.close()
    _state["file"] = None


def _hook_warnings() -> None:
    """Python warnings of this process also go to run.log (the console shows them as Python prints them)."""
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        previous(message, category, filename, lineno, file, line)
        handler = _state["file"]
        if handler is not None:
            text = warnings.formatwarning(message, category, filename, lineno, line).strip()
            handler.handle(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, "%s", (text,), None))

    warnings.showwarning = showwarning
